"""Ground-truth checks on answers, no judge needed: the `check:` of a prompt item.

A check is a mapping with a `type` (or a list of them: all must pass):

* `exact`        `value`, `ignore_case` (false), `strip` (true)
* `regex`        `pattern`, `flags` (letters of "imsx"); searched anywhere in the answer
* `number`       `value`, `tolerance` (absolute), `rel_tolerance`; the LAST number in the answer
* `contains_all` `values: [...]`, `ignore_case` (false)
* `json_schema`  `schema`; the answer, else its first ```json block, else its first JSON value, validated
* `python_tests` `tests` (Python source of asserts), `timeout_s` (10), `memory_mb` (512); the answer's code
                 block runs with the tests in a sandbox (runner/sandbox.py); a pass needs the harness's evidence
                 (see `_run_python_tests`)

`run_checks` never raises for anything the answer does: a crash, timeout or missing code is a failed
`CheckResult` whose `detail` says why; `transient` marks failures that say nothing definite about the answer
(a timeout, a signal, a sandbox failure). A bad spec is a `ValueError` from `validate_check`.
"""

from __future__ import annotations

import ast
import functools
import json
import marshal
import re
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import jsonschema

from runner import sandbox


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str
    transient: bool = False  # failed for a reason outside the answer (timeout, signal, sandbox): worth rerunning


# ---------------------------------------------------------------- validation

_FIELDS: dict[str, tuple[set[str], set[str]]] = {  # type → (required, optional) keys besides `type`
    "exact": ({"value"}, {"ignore_case", "strip"}),
    "regex": ({"pattern"}, {"flags"}),
    "number": ({"value"}, {"tolerance", "rel_tolerance"}),
    "contains_all": ({"values"}, {"ignore_case"}),
    "json_schema": ({"schema"}, set()),
    "python_tests": ({"tests"}, {"timeout_s", "memory_mb"}),
}
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def validate_check(spec: Any, where: str) -> None:
    """Raise ValueError naming `where` and the field at fault when `spec` is not a valid check."""
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where}: check: an empty list (give at least one check, or no `check`)")
        for i, one in enumerate(spec):
            _validate_one(one, where, f"check[{i}]")
    else:
        _validate_one(spec, where, "check")


def _validate_one(spec: Any, where: str, field: str) -> None:
    def fail(key: str | None, problem: str) -> NoReturn:
        raise ValueError(f"{where}: {field}.{key}: {problem}" if key else f"{where}: {field}: {problem}")

    if not isinstance(spec, dict):
        fail(None, f"expected a mapping with a `type`, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in _FIELDS:
        fail("type", f"unknown check type {kind!r} (one of {', '.join(_FIELDS)})")
    required, optional = _FIELDS[kind]
    if missing := sorted(required - set(spec)):
        fail(missing[0], f"missing (a {kind} check needs {', '.join(sorted(required))})")
    if unknown := sorted(set(spec) - required - optional - {"type"}):
        fail(unknown[0], f"unknown key for the {kind} check (allowed: {', '.join(sorted(required | optional))})")
    for key in ("ignore_case", "strip"):
        if key in spec and not isinstance(spec[key], bool):
            fail(key, f"expected true or false, got {spec[key]!r}")
    problem = _SPEC_PROBLEMS[kind](spec)
    if problem:
        fail(*problem)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _exact_problem(spec: dict) -> tuple[str, str] | None:
    if not isinstance(spec["value"], str) and not _is_number(spec["value"]):
        return "value", f"expected a string or a number, got {type(spec['value']).__name__}"
    return None


def _regex_problem(spec: dict) -> tuple[str, str] | None:
    flags = spec.get("flags", "")
    if not isinstance(flags, str) or set(flags) - set(_REGEX_FLAGS):
        return "flags", f"expected letters of {''.join(_REGEX_FLAGS)!r}, got {flags!r}"
    if not isinstance(spec["pattern"], str):
        return "pattern", f"expected a string, got {type(spec['pattern']).__name__}"
    try:
        re.compile(spec["pattern"])
    except re.error as e:
        return "pattern", f"bad regex ({e})"
    return None


def _number_problem(spec: dict) -> tuple[str, str] | None:
    if not _is_number(spec["value"]):
        return "value", f"expected a number, got {spec['value']!r}"
    for key in ("tolerance", "rel_tolerance"):
        if key in spec and not (_is_number(spec[key]) and spec[key] >= 0):
            return key, f"expected a number >= 0, got {spec[key]!r}"
    return None


def _contains_all_problem(spec: dict) -> tuple[str, str] | None:
    values = spec["values"]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        return "values", f"expected a non-empty list of non-empty strings, got {values!r}"
    return None


def _json_schema_problem(spec: dict) -> tuple[str, str] | None:
    schema = spec["schema"]
    if not isinstance(schema, (dict, bool)):
        return "schema", f"expected a JSON Schema mapping, got {type(schema).__name__}"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        return "schema", f"bad schema ({e.message})"
    return None


def _python_tests_problem(spec: dict) -> tuple[str, str] | None:
    tests = spec["tests"]
    if not isinstance(tests, str) or not tests.strip():
        return "tests", "expected Python source (asserts), got nothing"
    try:
        tree = compile(tests, "tests", "exec", ast.PyCF_ONLY_AST)
    except SyntaxError as e:
        return "tests", f"not valid Python ({e.msg}, line {e.lineno})"
    if not tree.body:
        return "tests", "no statement (only comments): a pass would prove nothing"
    if "timeout_s" in spec and not (_is_number(spec["timeout_s"]) and spec["timeout_s"] > 0):
        return "timeout_s", f"expected a number > 0, got {spec['timeout_s']!r}"
    if "memory_mb" in spec and not (isinstance(spec["memory_mb"], int) and spec["memory_mb"] >= 64):
        return "memory_mb", f"expected an integer >= 64, got {spec['memory_mb']!r}"
    return None


_SPEC_PROBLEMS: dict[str, Callable[[dict], tuple[str, str] | None]] = {
    "exact": _exact_problem, "regex": _regex_problem, "number": _number_problem,
    "contains_all": _contains_all_problem, "json_schema": _json_schema_problem,
    "python_tests": _python_tests_problem,
}


# ---------------------------------------------------------------- running

def run_checks(spec: dict | list | None, answer: str) -> CheckResult | None:
    """The verdict of `spec` (one check or a list: all must pass) on `answer`; None when there is no check."""
    if spec is None:
        return None
    validate_check(spec, "check")
    results = [_RUNNERS[one["type"]](one, answer) for one in (spec if isinstance(spec, list) else [spec])]
    passed = all(r.passed for r in results)
    definite_fail = any(not r.passed and not r.transient for r in results)
    return CheckResult(passed, "; ".join(r.detail for r in results if r.passed == passed),
                       transient=not passed and not definite_fail)


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _run_exact(spec: dict, answer: str) -> CheckResult:
    want, got = str(spec["value"]), answer
    if spec.get("strip", True):
        want, got = want.strip(), got.strip()
    if spec.get("ignore_case", False):
        want, got = want.casefold(), got.casefold()
    if want == got:
        return CheckResult(True, f"equals {_short(want)}")
    return CheckResult(False, f"expected {_short(want)}, got {_short(got)}")


def _run_regex(spec: dict, answer: str) -> CheckResult:
    flags = functools.reduce(lambda acc, letter: acc | _REGEX_FLAGS[letter], spec.get("flags", ""), 0)
    match = re.search(spec["pattern"], answer, flags)
    if match:
        return CheckResult(True, f"matched {_short(match.group(0))}")
    return CheckResult(False, f"no match for /{spec['pattern']}/{spec.get('flags', '')}")


# A number: optional sign, digits with optional 1,234 thousands groups, decimals, exponent (1.5e3).
# Not preceded by a letter, digit or dot, so "x2" and the "5" of "1.5" never count on their own.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def _run_number(spec: dict, answer: str) -> CheckResult:
    found = _NUMBER.findall(answer)
    want = spec["value"]
    tol, rel = spec.get("tolerance", 0), spec.get("rel_tolerance", 0)
    expected = f"expected {want}" + (f" ± {tol}" if tol else "") + (f" (± {rel * 100:g}%)" if rel else "")
    if not found:
        return CheckResult(False, f"no number in the answer, {expected}")
    text = found[-1]
    value = float(text.replace(",", ""))
    ok = abs(value - want) <= max(tol, rel * abs(want))
    return CheckResult(ok, f"found {text} (last number), {expected}")


def _run_contains_all(spec: dict, answer: str) -> CheckResult:
    fold = (lambda s: s.casefold()) if spec.get("ignore_case", False) else (lambda s: s)
    missing = [v for v in spec["values"] if fold(v) not in fold(answer)]
    if missing:
        return CheckResult(False, "missing " + ", ".join(_short(v) for v in missing))
    return CheckResult(True, f"contains all {len(spec['values'])} terms")


_JSON_FENCE = re.compile(r"```[ \t]*json[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _extract_json(answer: str) -> tuple[bool, Any]:
    """(found, value): the whole answer as JSON, else its first ```json block, else its first JSON value."""
    fence = _JSON_FENCE.search(answer)
    candidates = [answer.strip()] + ([fence.group(1)] if fence else [])
    for text in candidates:
        try:
            return True, json.loads(text)
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(answer) if ch in "{["):
        try:
            return True, decoder.raw_decode(answer, start)[0]
        except ValueError:
            pass
    return False, None


def _run_json_schema(spec: dict, answer: str) -> CheckResult:
    found, value = _extract_json(answer)
    if not found:
        return CheckResult(False, "no JSON in the answer")
    schema = spec["schema"]
    validator_cls = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
    if error is not None:
        return CheckResult(False, f"JSON does not match the schema: {error.message} (at {error.json_path})")
    return CheckResult(True, "JSON matches the schema")


# ---------------------------------------------------------------- python_tests

_CODE_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_HARNESS = (Path(__file__).with_name("harness.py")).read_text(encoding="utf-8")
# The child's program: the harness, run with a private copy of the builtins (see runner/harness.py).
_BOOT = ("import builtins\n"
         f"exec(compile({_HARNESS!r}, 'harness', 'exec'),\n"
         "     {'__builtins__': dict(vars(builtins)), '__name__': 'harness'})")


def _code_block(answer: str) -> str | None:
    """The first ```python block of the answer, else its first fenced block of any language."""
    blocks = _CODE_FENCE.findall(answer)
    for lang, code in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return code
    return blocks[0][1] if blocks else None


def _run_python_tests(spec: dict, answer: str) -> CheckResult:
    """Run the answer's code block, then `tests`, in the sandbox (runner/sandbox.py: isolation, limits, kill).

    **A pass needs evidence.** The runner sends the child, on a pipe read and closed before the answer's code
    runs, a one-time key with the code and the tests. The harness (runner/harness.py) runs the answer's code,
    then each top-level statement of the tests, and only if all of them complete writes a line starting with the
    key and the number of statements completed, which must equal the runner's own count. No line with the key:
    no pass, whatever the child's exit status. The harness holds its own references: the tests, compiled before
    the answer's code ran, run with a copy of the builtins taken before it too, and the harness itself calls
    only what it captured then (patching `builtins.exec`, `AssertionError`, `json`, `os.write` changes nothing).
    The key is in no file and no module: only in the harness's locals. An audit hook installed before the
    answer's code refuses the usual ways to them: frames (`sys._getframe`, `tb_frame`, `gi_frame`,
    `sys._current_frames`, tracing and profiling), `gc.get_objects`/`get_referrers`, signal handlers (they get
    the current frame), ctypes, new audit hooks; and new processes and the network (the Python-level layer
    under the kernel's). So an answer that exits early (`os._exit(0)`, `sys.exit`, a signal), fakes a report,
    or patches the interpreter's Python-level objects fails, with the reason in `detail`.

    **Not guaranteed**: an answer's own objects decide their comparisons (`__eq__` that is always True passes
    `==` asserts: that is Python, and tests should compare plain values); and the audit hook is not a Python
    sandbox (PEP 578): code written to attack this harness through interpreter internals (re-creating a
    builtin module through `_imp`, crafted bytecode through `marshal`, a C extension reading memory, `gc`
    debug lists) can still forge a pass. The sandbox keeps such code from anything outside its own verdict.
    The tests run in a copy of the answer's namespace: a global the answer rebinds later (not mutates) is
    not seen by them; and a test that hands the answer one of its own functions hands it the tests'
    namespace (`__globals__`), not the key. A failure in a helper the tests define is reported at the line
    of the top-level statement that called it.

    A timeout, a kill by a signal (CPU limit included) and a sandbox failure say nothing definite about the
    answer: those results are `transient` (runner/stages/check.py does not cache them).
    """
    code = _code_block(answer)
    if code is None:
        return CheckResult(False, "no code block")
    timeout_s = float(spec.get("timeout_s", 10))
    memory_mb = int(spec.get("memory_mb", 512))
    key = secrets.token_hex(16)
    statements = len(ast.parse(spec["tests"]).body)
    payload = marshal.dumps((key, code, spec["tests"]))
    run = sandbox.run_python(_BOOT, payload, timeout_s=timeout_s, memory_mb=memory_mb)
    if run.status == "error":
        return CheckResult(False, f"could not run the tests: {run.error}", transient=True)
    if (verdict := _evidence(run.channel, key, statements, memory_mb)) is not None:
        return verdict
    if run.status == "timeout":
        return CheckResult(False, f"timeout after {timeout_s:g} s", transient=True)
    if run.status == "signaled":
        if run.code == signal.SIGXCPU:
            return CheckResult(False, f"CPU time limit exceeded ({sandbox.cpu_seconds(timeout_s)} s)", transient=True)
        return CheckResult(False, f"killed by signal {run.code} ({signal.strsignal(run.code)})", transient=True)
    if len(run.channel) >= sandbox.CHANNEL_CAP:
        return CheckResult(False, "the answer's code flooded the harness's channel (fd 3): no report")
    last = run.output.strip().splitlines()
    return CheckResult(False, f"the answer's code exited (status {run.code}) before the tests finished"
                       + (f": {last[-1][:200]}" if last else ""))


def _evidence(channel: bytes, key: str, statements: int, memory_mb: int) -> CheckResult | None:
    """The harness's report: the line from the first occurrence of the key on; None when there is none."""
    at = channel.find(key.encode() + b" ")
    if at < 0:
        return None
    fields = channel[at:].split(b"\n", 1)[0].decode("ascii", "replace").split(" ")
    try:
        _, passed, ran, evidence = fields
        detail = bytes.fromhex(evidence).decode("utf-8", "replace")
        completed = int(ran)
    except ValueError:
        return CheckResult(False, "the harness's report is malformed")
    if passed == "1":
        if completed == statements:
            return CheckResult(True, detail)
        return CheckResult(False, f"the harness reported {completed} of {statements} test statements")
    if detail.startswith("MemoryError"):
        detail = detail.replace("MemoryError", f"MemoryError (memory limit {memory_mb} MB)", 1)
    return CheckResult(False, detail)


_RUNNERS: dict[str, Callable[[dict, str], CheckResult]] = {
    "exact": _run_exact, "regex": _run_regex, "number": _run_number, "contains_all": _run_contains_all,
    "json_schema": _run_json_schema, "python_tests": _run_python_tests,
}
