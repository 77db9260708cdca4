"""Ground-truth checks on answers, no judge needed: the `check:` of a prompt item.

A check is a mapping with a `type` (or a list of them: all must pass):

* `exact`        `value`, `ignore_case` (false), `strip` (true)
* `regex`        `pattern`, `flags` (letters of "imsx"); searched anywhere in the answer
* `number`       `value`, `tolerance` (absolute), `rel_tolerance`; the LAST number in the answer
* `contains_all` `values: [...]`, `ignore_case` (false)
* `json_schema`  `schema`; the answer, else its first ```json block, else its first JSON value, validated
* `python_tests` `tests` (Python source of asserts), `timeout_s` (10), `memory_mb` (512); the answer's code
                 block runs with the tests in a sandboxed subprocess (see `_run_python_tests`)

`run_checks` never raises for anything the answer does: a crash, timeout or missing code is a failed
`CheckResult` whose `detail` says why. A bad spec is a `ValueError` from `validate_check`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pwd
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import jsonschema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str


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
        compile(tests, "tests", "exec")
    except SyntaxError as e:
        return "tests", f"not valid Python ({e.msg}, line {e.lineno})"
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
    return CheckResult(passed, "; ".join(r.detail for r in results if r.passed == passed))


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


# ---------------------------------------------------------------- python_tests sandbox

_CODE_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_NPROC_HEADROOM = 16  # processes (threads on Linux) the answer's code may add to its user's count
_FSIZE_BYTES = 16 * 2**20
_NOFILE = 64

# Runs in the child before the answer's code. Python-level only: code that reaches the OS another way
# (ctypes, `_socket`, a C extension) gets past it; the kernel limits below are what holds then.
_HARNESS = r'''
import json, os, socket, sys, types

def _refuse(what):
    def refuse(*args, **kwargs):
        raise OSError(what + " disabled")
    return refuse

class _NoNetworkSocket(socket.socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None:  # wrapping a descriptor that already exists (socketpair, fromfd) opens nothing
            raise OSError("network disabled")
        super().__init__(family, type, proto, fileno)

socket.socket = _NoNetworkSocket
for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
              "gethostbyaddr"):
    setattr(socket, _name, _refuse("network"))
import _posixsubprocess  # subprocess and multiprocessing start processes through it
_posixsubprocess.fork_exec = _refuse("process creation")
for _name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve"):
    if hasattr(os, _name):
        setattr(os, _name, _refuse("process creation"))


def _describe(exc, tests):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = text if len(text) <= 300 else text[:300] + "..."
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "tests.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None:
        return f"{text} (tests line {line}: {tests.splitlines()[line - 1].strip()})"
    return text


def _main():
    with open("token", encoding="utf-8") as f:
        token = f.read()
    os.remove("token")
    with open("solution.py", encoding="utf-8") as f:
        solution = f.read()
    with open("tests.py", encoding="utf-8") as f:
        tests = f.read()
    verdict_path = os.path.abspath("verdict.json")
    module = types.ModuleType("solution")  # not __main__: the answer's `if __name__ == "__main__":` demo stays off
    sys.modules["solution"] = module
    try:
        exec(compile(solution, "solution.py", "exec"), module.__dict__)
    except BaseException as exc:
        module.__dict__.clear()  # frees what a memory hog kept, so the report can be written
        verdict = {"passed": False, "detail": _describe(exc, tests) + " (while running the answer's code)"}
    else:
        try:
            exec(compile(tests, "tests.py", "exec"), module.__dict__)
            verdict = {"passed": True, "detail": "all tests passed"}
        except BaseException as exc:
            module.__dict__.clear()
            verdict = {"passed": False, "detail": _describe(exc, tests)}
    with open(verdict_path, "w", encoding="utf-8") as f:
        json.dump({"token": token, **verdict}, f)


_main()
'''


def _code_block(answer: str) -> str | None:
    """The first ```python block of the answer, else its first fenced block of any language."""
    blocks = _CODE_FENCE.findall(answer)
    for lang, code in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return code
    return blocks[0][1] if blocks else None


def _run_python_tests(spec: dict, answer: str) -> CheckResult:
    """Run the answer's code block, then `tests`, in a child Python with:

    * an empty environment (no host variable, so no secret, reaches it), cwd a fresh temp dir, stdin closed;
    * rlimits: CPU seconds, address space (`memory_mb`), processes (RLIMIT_NPROC, see `_nproc_limit`),
      file size, open files, no core dumps;
    * its own session, killed as a process group after `timeout_s` of wall time (and after it exits, to
      end anything it left behind);
    * the verdict read from a file tagged with a per-run token, so an answer that exits early fails;
    * a Python-level prelude that disables sockets, DNS and process creation (`_HARNESS`);
    * as root: the user `nobody` (when the interpreter works as nobody), since the kernel never applies
      RLIMIT_NPROC to root and root can read every file.

    Not a kernel sandbox: the filesystem is visible with the child's user rights, and a child that runs
    as the invoking user can read that user's files, including /proc/<parent>/environ.
    """
    code = _code_block(answer)
    if code is None:
        return CheckResult(False, "no code block")
    timeout_s = float(spec.get("timeout_s", 10))
    memory_mb = int(spec.get("memory_mb", 512))
    try:
        with tempfile.TemporaryDirectory(prefix="runner-check-", ignore_cleanup_errors=True) as tmp:
            return _sandboxed(Path(tmp), code, spec["tests"], timeout_s, memory_mb)
    except (OSError, subprocess.SubprocessError) as e:  # the sandbox could not start: still a verdict
        return CheckResult(False, f"could not run the tests: {e}")


def _sandboxed(tmp: Path, code: str, tests: str, timeout_s: float, memory_mb: int) -> CheckResult:
    token = secrets.token_hex(16)
    for name, text in (("harness.py", _HARNESS), ("solution.py", code), ("tests.py", tests), ("token", token)):
        (tmp / name).write_text(text, encoding="utf-8")
    user = _sandbox_user()
    as_user: dict[str, Any] = {}
    if user is not None:
        os.chown(tmp, *user)
        as_user = {"user": user[0], "group": user[1], "extra_groups": []}
    limits = _limits(timeout_s, memory_mb, _nproc_limit(user[0] if user else os.getuid()))
    # Output goes to a file, not a pipe: a leftover grandchild holding a pipe would block the read.
    with open(tmp / "output.txt", "wb") as output:
        proc = subprocess.Popen(
            [sys.executable, "-I", "harness.py"], cwd=tmp, env={}, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=functools.partial(_apply_limits, limits),
            **as_user)
    try:
        proc.wait(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        proc.wait()
    if timed_out:
        return CheckResult(False, f"timeout after {timeout_s:g} s")
    return _verdict(tmp, token, proc.returncode, memory_mb, _cpu_seconds(timeout_s))


def _verdict(tmp: Path, token: str, returncode: int, memory_mb: int, cpu_s: int) -> CheckResult:
    """What the harness reported (only with the right token), else why the child ended without a report."""
    try:
        verdict = json.loads((tmp / "verdict.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        verdict = None
    if isinstance(verdict, dict) and verdict.get("token") == token:
        detail = str(verdict.get("detail"))
        if detail.startswith("MemoryError"):
            detail = detail.replace("MemoryError", f"MemoryError (memory limit {memory_mb} MB)", 1)
        return CheckResult(verdict.get("passed") is True, detail)
    if returncode < 0:
        if -returncode == signal.SIGXCPU:
            return CheckResult(False, f"CPU time limit exceeded ({cpu_s} s)")
        return CheckResult(False, f"killed by signal {-returncode} ({signal.strsignal(-returncode)})")
    last = (tmp / "output.txt").read_bytes()[-2000:].decode(errors="replace").strip().splitlines()
    return CheckResult(False, f"the answer's code exited (status {returncode}) before the tests finished"
                       + (f": {last[-1][:200]}" if last else ""))


def _limits(timeout_s: float, memory_mb: int, nproc: int | None) -> list[tuple[int, tuple[int, int]]]:
    """The rlimits for the child, each capped by the current hard limit (an unprivileged parent cannot raise it)."""
    cpu = _cpu_seconds(timeout_s)
    memory = memory_mb * 2**20
    wanted = [(resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
              (resource.RLIMIT_AS, memory, memory), (resource.RLIMIT_FSIZE, _FSIZE_BYTES, _FSIZE_BYTES),
              (resource.RLIMIT_NOFILE, _NOFILE, _NOFILE), (resource.RLIMIT_CORE, 0, 0)]
    if nproc is not None:
        wanted.append((resource.RLIMIT_NPROC, nproc, nproc))

    def capped(res: int, value: int) -> int:
        hard = resource.getrlimit(res)[1]
        return value if hard == resource.RLIM_INFINITY else min(value, hard)

    return [(res, (capped(res, soft), capped(res, hard))) for res, soft, hard in wanted]


def _cpu_seconds(timeout_s: float) -> int:
    """The CPU limit: a second past the wall-clock timeout, so it only decides for code that uses several
    cores at once (or for a process that escaped the group kill)."""
    return math.ceil(timeout_s) + 1


def _apply_limits(limits: list[tuple[int, tuple[int, int]]]) -> None:
    # Runs between fork and exec (preexec_fn): setrlimit calls on precomputed values only, no imports or
    # locks, so a thread of the parent holding a lock at fork time cannot deadlock the child.
    for res, values in limits:
        resource.setrlimit(res, values)


def _nproc_limit(uid: int) -> int | None:
    """RLIMIT_NPROC for a child running as `uid`: what that user runs now plus a small headroom.

    The limit counts every process (on Linux, thread) of the user, not only the child's, hence the
    current count. None for root: the kernel does not apply it to uid 0.
    """
    return None if uid == 0 else _task_count(uid) + _NPROC_HEADROOM


def _task_count(uid: int) -> int:
    """Tasks whose real uid is `uid`: threads on Linux (what RLIMIT_NPROC counts there), else processes."""
    proc = Path("/proc")
    if not (proc / "self" / "status").exists():
        listing = subprocess.run(["ps", "-A", "-o", "ruid="], capture_output=True, text=True, check=False).stdout
        return listing.split().count(str(uid))
    total = 0
    for status in proc.glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended meanwhile
            continue
        if int(fields["Uid"].split()[0]) == uid:
            total += int(fields["Threads"])
    return total


@functools.cache
def _sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when the runner is root and the interpreter works as nobody; else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        ids = (entry.pw_uid, entry.pw_gid)
        probe = subprocess.run([sys.executable, "-I", "-c", ""], user=ids[0], group=ids[1], extra_groups=[],
                               env={}, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30, check=False)
        if probe.returncode == 0:
            return ids
    except (KeyError, OSError, subprocess.SubprocessError):
        pass
    log.warning("python_tests checks run as root: %s does not run as user nobody, so the answers' code can read "
                "root's files and its process count is limited only by the Python-level guard", sys.executable)
    return None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_RUNNERS: dict[str, Callable[[dict, str], CheckResult]] = {
    "exact": _run_exact, "regex": _run_regex, "number": _run_number, "contains_all": _run_contains_all,
    "json_schema": _run_json_schema, "python_tests": _run_python_tests,
}
