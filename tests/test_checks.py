"""Ground-truth checks (runner/checks.py): each check type, the python_tests sandbox, bad specs, prompt files
with checks (YAML and JSONL), and the `standard` suite against hand-written good and bad answers."""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import checks, sandbox
from runner.cell import load_option
from runner.checks import run_checks, validate_check
from runner.prompts import load_prompts


def py(code: str) -> str:
    """An answer the way models write one: prose, then a fenced Python block."""
    return f"Here is the function:\n\n```python\n{code.strip()}\n```\n\nIt runs in linear time."


def python_tests_spec(tests: str, **options) -> dict:
    return {"type": "python_tests", "tests": tests, **options}


# ---------------------------------------------------------------- each check type

JSON_SCHEMA = {"type": "json_schema",
               "schema": {"type": "object", "required": ["name", "year"],
                          "properties": {"name": {"type": "string"}, "year": {"type": "integer"}}}}


@pytest.mark.parametrize("spec,answer,passed,detail", [
    ({"type": "exact", "value": "HELLO"}, "  HELLO\n", True, "equals 'HELLO'"),
    ({"type": "exact", "value": "HELLO"}, "Hello", False, "expected 'HELLO', got 'Hello'"),
    ({"type": "exact", "value": "HELLO", "ignore_case": True}, "hello", True, ""),
    ({"type": "exact", "value": "HELLO", "strip": False}, "HELLO\n", False, "expected 'HELLO'"),
    ({"type": "exact", "value": 42}, "42", True, ""),
    ({"type": "regex", "pattern": r"\bCanberra\b", "flags": "i"}, "It is canberra.", True, "matched 'canberra'"),
    ({"type": "regex", "pattern": r"\bCanberra\b"}, "It is canberra.", False, r"no match for /\bCanberra\b/"),
    ({"type": "regex", "pattern": r"^- b$", "flags": "m"}, "- a\n- b\n", True, ""),
    ({"type": "number", "value": 1234}, "The total is 1,234.", True, "found 1,234 (last number)"),
    ({"type": "number", "value": 1500}, "That is 1.5e3 metres", True, "found 1.5e3"),
    ({"type": "number", "value": -2.5}, "x = -2.5", True, ""),
    ({"type": "number", "value": 30}, "Step 1 gives 10, step 2 gives 20, so the answer is 30.", True, ""),
    ({"type": "number", "value": 42}, "About 41.", False, "found 41 (last number), expected 42"),
    ({"type": "number", "value": 28.27, "tolerance": 0.01}, "Area ≈ 28.274", True, "expected 28.27 ± 0.01"),
    ({"type": "number", "value": 28.27, "tolerance": 0.01}, "Area ≈ 28.3", False, "found 28.3"),
    ({"type": "number", "value": 18e6, "rel_tolerance": 0.01}, "About 18,100,000 km.", True, "(± 1%)"),
    ({"type": "number", "value": 5}, "I cannot tell.", False, "no number in the answer, expected 5"),
    ({"type": "contains_all", "values": ["adenine", "thymine"], "ignore_case": True}, "Adenine, Thymine.", True,
     "contains all 2 terms"),
    ({"type": "contains_all", "values": ["adenine", "thymine"]}, "Adenine and thymine", False, "missing 'adenine'"),
    (JSON_SCHEMA, '{"name": "Python", "year": 1991}', True, "JSON matches the schema"),
    (JSON_SCHEMA, 'Sure:\n```json\n{"name": "Python", "year": 1991}\n```', True, ""),
    (JSON_SCHEMA, 'The object is {"name": "Python", "year": 1991} as asked.', True, ""),
    (JSON_SCHEMA, '{"name": "Python"}', False, "'year' is a required property (at $)"),
    (JSON_SCHEMA, '{"name": "Python", "year": "1991"}', False, "'1991' is not of type 'integer' (at $.year)"),
    (JSON_SCHEMA, "name: Python, year: 1991", False, "no JSON in the answer"),
    ([{"type": "regex", "pattern": "Paris"}, {"type": "number", "value": 3}], "Paris, 3", True,
     "matched 'Paris'; found 3"),
    ([{"type": "regex", "pattern": "Paris"}, {"type": "number", "value": 3}], "Paris, 4", False, "found 4"),
])
def test_check_types(spec, answer, passed, detail):
    result = run_checks(spec, answer)
    assert result.passed is passed, result
    assert detail in result.detail
    if isinstance(spec, list) and not passed:
        assert "matched" not in result.detail  # a failed list names only what failed


def test_no_check_gives_none():
    assert run_checks(None, "anything") is None


# ---------------------------------------------------------------- python_tests and its sandbox

SQUARE = "def square(x: int) -> int:\n    return x * x\n"
SQUARE_TESTS = "assert square(2) == 4\nassert square(-3) == 9\n"


@pytest.mark.parametrize("answer,passed,detail", [
    (py(SQUARE), True, "all tests passed"),
    (py("def square(x):\n    return x + x\n"), False, "AssertionError (tests line 2: assert square(-3) == 9)"),
    ("square(x) returns x * x", False, "no code block"),
    (f"```\n{SQUARE}```", True, ""),  # no python block: any fenced block
    (f"```text\nsquare = None\n```\n```python\n{SQUARE}```", True, ""),  # the python block first
    (py("def square(x:\n    return x"), False, "SyntaxError"),
    (py(SQUARE + 'if __name__ == "__main__":\n    print(square(int(input())))\n'), True, ""),  # demo stays off
    (py("import sys\nsys.exit(0)"), False, "SystemExit: 0 (while running the answer's code)"),
    (py("import os\nos._exit(0)"), False, "the answer's code exited (status 0) before the tests finished"),
    (py("def square(x):\n    raise ValueError('nope')"), False, "ValueError: nope (tests line 1"),
])
def test_python_tests(answer, passed, detail):
    result = run_checks(python_tests_spec(SQUARE_TESTS), answer)
    assert result.passed is passed, result
    assert detail in result.detail


def sandboxed(code: str, tests: str = "assert True", **options):
    start = time.monotonic()
    result = run_checks(python_tests_spec(tests, **options), py(code))
    return result, time.monotonic() - start


def test_fork_bomb_fails_fast():
    result, elapsed = sandboxed("import os\nwhile True:\n    os.fork()", timeout_s=3)
    assert not result.passed and "process creation disabled" in result.detail and elapsed < 3


def test_subprocess_is_refused():
    result, elapsed = sandboxed("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])")
    assert not result.passed and "process creation disabled" in result.detail and elapsed < 3


def test_infinite_loop_times_out():
    result, elapsed = sandboxed("def spin():\n    while True:\n        pass", "spin()", timeout_s=1)
    assert not result.passed and result.detail == "timeout after 1 s" and elapsed < 3


def test_memory_hog_hits_the_memory_limit():
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))"
    result, elapsed = sandboxed(hog, memory_mb=256)
    assert not result.passed and result.detail.startswith("MemoryError (memory limit 256 MB)") and elapsed < 5


@pytest.mark.parametrize("call", [
    "urllib.request.urlopen('http://127.0.0.1:9', timeout=1)",
    "socket.create_connection(('127.0.0.1', 9), timeout=1)",
    "socket.socket().connect(('127.0.0.1', 9))",
    "socket.getaddrinfo('example.com', 80)",
])
def test_network_is_disabled(call):
    result, elapsed = sandboxed(f"import socket, urllib.request\ndef fetch():\n    return {call}", "assert fetch()")
    assert not result.passed and "network disabled" in result.detail and elapsed < 3


def test_local_socketpair_still_works():
    """asyncio needs socket.socketpair(): only sockets that reach out are refused."""
    code = "import asyncio\nasync def answer():\n    return 42\ndef run():\n    return asyncio.run(answer())"
    result, _ = sandboxed(code, "assert run() == 42")
    assert result.passed, result


def test_host_environment_never_reaches_the_child(monkeypatch):
    monkeypatch.setenv("RUNNER_TEST_SECRET", "sk-planted")
    result, elapsed = sandboxed("import os\ndef leak():\n    return os.environ['RUNNER_TEST_SECRET']",
                                "assert leak().startswith('sk-')")
    assert not result.passed and "KeyError: 'RUNNER_TEST_SECRET'" in result.detail and elapsed < 3
    assert "sk-planted" not in result.detail
    result, _ = sandboxed("import os\ndef env():\n    return dict(os.environ)",
                          "assert not {'RUNNER_TEST_SECRET', 'PATH', 'HOME'} & set(env()), env()")
    assert result.passed, result


# ---------------------------------------------------------------- a pass needs the harness's evidence

@pytest.fixture(params=["namespaces", "plain"])
def isolation(request, monkeypatch) -> sandbox.Plan:
    """Each level of runner/sandbox.py that can run here: the verdict must hold in both."""
    best = sandbox.plan()
    if request.param == "namespaces":
        if not best.namespaces:
            pytest.skip("no user namespaces here")
        return best
    plain = sandbox.Plan(False, sandbox._plain_user(sandbox._nobody()))
    monkeypatch.setattr(sandbox, "_PLAN", plain)
    return plain


ADD = "def add(a, b):\n    return a + b\n"
WRONG_TESTS = "assert add(1, 1) == 3\n"  # a correct add must fail these: a pass can only be faked

# Walks frames up from a start, writes a forged report for every 32-character string it finds (the old
# verdict file, and the evidence line for WRONG_TESTS's one statement), then leaves before the tests.
FORGE = """
import json, os, sys
def forge(frame):
    while frame is not None:
        for value in [*frame.f_locals.values(), *frame.f_globals.values()]:
            if isinstance(value, str) and len(value) == 32:
                with open("verdict.json", "w") as f:
                    json.dump({"token": value, "passed": True, "detail": "all tests passed"}, f)
                try:
                    os.write(3, f"{value} 1 1 {b'all tests passed'.hex()}\\n".encode())
                except OSError:
                    pass
        frame = frame.f_back
    os._exit(0)
"""


@pytest.mark.parametrize("cheat", [
    "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + ADD,
    "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n" + ADD,
    FORGE + "forge(sys._getframe(1))\n",
    FORGE + "try:\n    raise ValueError\nexcept ValueError as e:\n    forge(e.__traceback__.tb_frame)\n",
    FORGE + "import threading\nforge(sys._current_frames()[threading.get_ident()])\n",
    FORGE + "def add(a, b):\n    forge(sys._getframe(1))\n",  # from inside the tests
    FORGE + "import signal\nsignal.signal(signal.SIGALRM, lambda signum, frame: forge(frame))\n"
            "signal.setitimer(signal.ITIMER_REAL, 0.001)\nimport time\ntime.sleep(1)\n",
    "import json, os\njson.dump({'token': open('token').read(), 'passed': True, 'detail': 'ok'},\n"
    "          open('verdict.json', 'w'))\nos._exit(0)\n",
    "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "import os\ndef add(a, b):\n    os._exit(0)\n",
    "import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})\n" + ADD,
    FORGE + "sys.settrace(lambda frame, event, arg: forge(frame))\ndef poke():\n    pass\npoke()\n",
    "import ctypes\n" + ADD,
], ids=["patched-exec", "patched-compile", "frame-getframe", "frame-traceback", "frame-current-frames",
        "frame-during-tests", "frame-signal-handler", "token-file", "sys-exit-in-tests", "os-exit-in-tests",
        "patched-assertionerror", "settrace", "ctypes"])
def test_a_pass_cannot_be_faked(isolation, cheat):
    result = run_checks(python_tests_spec(WRONG_TESTS, timeout_s=5), py(cheat))
    assert not result.passed and result.detail, result
    assert not result.transient, result


def test_every_statement_must_complete(isolation):
    result, _ = sandboxed(ADD, "assert add(1, 1) == 2\nassert add(2, 2) == 5\nassert add(0, 0) == 0")
    assert not result.passed and result.detail == "AssertionError (tests line 2: assert add(2, 2) == 5)"
    result, _ = sandboxed(ADD, "for a in range(3):\n    assert add(a, 1) == a + 1\nassert add(1, 1) == 2")
    assert result.passed and result.detail == "all tests passed", result


def test_an_answers_own_eq_decides_its_comparisons():
    """The documented limit: an object of the answer's that equals everything passes `==` asserts."""
    result, _ = sandboxed("class Anything:\n    def __eq__(self, other):\n        return True\n"
                          "def add(a, b):\n    return Anything()", WRONG_TESTS)
    assert result.passed, result


def test_tests_without_a_statement_are_a_bad_spec():
    with pytest.raises(ValueError, match="no statement"):
        validate_check(python_tests_spec("# nothing to run\n"), "suite.yaml:3")


# ---------------------------------------------------------------- the answer reaches nothing outside

LEAK = """
import os
def harvest():
    found = []
    pids = ["self", str(os.getppid()), "1", *(os.listdir("/proc") if os.path.isdir("/proc") else [])]
    for pid in pids:
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            found += [part.decode(errors="replace") for part in data.split(b"\\0") if b"RUNNER_TEST_SECRET" in part]
    return found
FOUND = harvest()
"""
ENDINGS = {"raise": "assert not FOUND, FOUND", "print-and-exit": "print(FOUND, flush=True)\nimport os\nos._exit(3)"}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_the_runners_environment_is_out_of_reach(isolation, ending, tmp_path):
    """A runner whose environment holds a key (as exec'd: /proc/<pid>/environ shows the environment a process
    started with, so the key is planted in a real runner process's, not in this one's os.environ). The answer
    looks for it in /proc/<ppid>/environ, /proc/1/environ and every /proc entry, and writes back what it found
    through the detail: the exception text, or the last line it printed."""
    secret = "sk-planted-" + os.urandom(8).hex()
    code, tests = (LEAK + ENDINGS[ending], "assert True") if ending != "raise" else (LEAK, ENDINGS[ending])
    script = (f"import json, sys\nfrom runner import sandbox\nfrom runner.checks import run_checks\n"
              f"sandbox._PLAN = sandbox.{isolation!r}\n"
              f"r = run_checks({python_tests_spec(tests)!r}, {py(code)!r})\n"
              f"print(json.dumps([r.passed, r.detail]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RUNNER_TEST_SECRET": secret}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert secret not in proc.stdout + proc.stderr
    passed, detail = json.loads(proc.stdout.splitlines()[-1])
    assert (passed, detail) == ((True, "all tests passed") if ending == "raise" else
                                (False, "the answer's code exited (status 3) before the tests finished: []"))


def test_no_process_through_posix_fork(isolation):
    code = ("import posix\ndef forked():\n    pid = posix.fork()\n    if pid == 0:\n        posix._exit(0)\n"
            "    return pid > 0")
    result, _ = sandboxed(code, "assert forked()")
    assert not result.passed and "process creation disabled" in result.detail, result


def test_no_connection_through_raw_socket(isolation):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0)
        port = listener.getsockname()[1]
        code = ("import _socket\ndef connect(port):\n    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
                "    s.connect(('127.0.0.1', port))\n    return True")
        result, _ = sandboxed(code, f"assert connect({port})")
        assert not result.passed and "network disabled" in result.detail, result
        with pytest.raises(BlockingIOError):
            listener.accept()


SETSID = """
import os, posix, time
try:
    if posix.fork() != 0:  # where a fork works, the parent waits out the timeout and the child leaves the group
        time.sleep(30)
except OSError:
    pass
os.setsid()
time.sleep(30)
"""


def test_setsid_does_not_outlive_the_timeout(isolation, reaper):
    result, elapsed = sandboxed(SETSID, timeout_s=1)
    assert elapsed < 3 and reaper() == []
    assert (result.passed, result.detail, result.transient) == (False, "timeout after 1 s", True)


PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def reaper():
    """This process as child subreaper for one test: what the sandbox leaves behind is re-parented here, and the
    fixture's function lists those still alive (zombies are reaped)."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    def children() -> list[str]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                if fields[0] == "Z":
                    os.waitpid(int(stat.parent.name), os.WNOHANG)
                else:
                    found.append(stat.parent.name)
        return found

    before = set(children())  # children of this process that other fixtures started (servers of other tests)

    def alive() -> list[str]:
        time.sleep(0.2)  # a killed process needs a moment to be re-parented
        return [pid for pid in children() if pid not in before]

    yield alive
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# ---------------------------------------------------------------- transient outcomes

@pytest.mark.parametrize("code,tests,transient", [
    ("def spin():\n    while True:\n        pass", "spin()", True),  # timeout
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "assert True", True),
    (ADD, WRONG_TESTS, False),
    ("import os\nos._exit(1)", "assert True", False),
])
def test_only_outcomes_outside_the_answer_are_transient(code, tests, transient):
    result, _ = sandboxed(code, tests, timeout_s=1)
    assert not result.passed and result.transient is transient, result


def test_a_flood_on_the_channel_is_no_pass_and_no_hang():
    result, elapsed = sandboxed("import os\nos.write(3, b'x' * 2**21)", timeout_s=5)
    assert result == checks.CheckResult(False, "the answer's code flooded the harness's channel (fd 3): no report")
    assert elapsed < 5


def test_a_definite_failure_outweighs_a_transient_one_in_a_list():
    spin = python_tests_spec("spin()", timeout_s=1)
    answer = py("def spin():\n    while True:\n        pass")
    assert run_checks([spin, {"type": "regex", "pattern": "```"}], answer).transient
    assert not run_checks([spin, {"type": "regex", "pattern": "nowhere"}], answer).transient


# ---------------------------------------------------------------- bad check specs

@pytest.mark.parametrize("spec,message", [
    ({"type": "fuzzy"}, "check.type: unknown check type 'fuzzy'"),
    ({"value": "a"}, "check.type: unknown check type None"),
    ({"type": "regex"}, "check.pattern: missing"),
    ({"type": "regex", "pattern": "("}, "check.pattern: bad regex"),
    ({"type": "regex", "pattern": "a", "flags": "iq"}, "check.flags: expected letters of 'imsx'"),
    ({"type": "exact", "value": "a", "tolerence": 1}, "check.tolerence: unknown key for the exact check"),
    ({"type": "exact", "value": ["a"]}, "check.value: expected a string or a number"),
    ({"type": "exact", "value": "a", "ignore_case": "yes"}, "check.ignore_case: expected true or false"),
    ({"type": "number", "value": "ten"}, "check.value: expected a number"),
    ({"type": "number", "value": True}, "check.value: expected a number"),
    ({"type": "number", "value": 1, "tolerance": -1}, "check.tolerance: expected a number >= 0"),
    ({"type": "contains_all", "values": "abc"}, "check.values: expected a non-empty list"),
    ({"type": "json_schema", "schema": {"type": "objekt"}}, "check.schema: bad schema"),
    ({"type": "json_schema", "schema": "object"}, "check.schema: expected a JSON Schema mapping"),
    ({"type": "python_tests", "tests": "assert ("}, "check.tests: not valid Python"),
    ({"type": "python_tests", "tests": " "}, "check.tests: expected Python source"),
    ({"type": "python_tests", "tests": "assert True", "timeout_s": 0}, "check.timeout_s: expected a number > 0"),
    ({"type": "python_tests", "tests": "assert True", "memory_mb": 8}, "check.memory_mb: expected an integer >= 64"),
    ([{"type": "exact", "value": "a"}, {"type": "regex", "pattern": "["}], "check[1].pattern: bad regex"),
    ([], "check: an empty list"),
    ("exact", "check: expected a mapping with a `type`, got str"),
])
def test_bad_check_spec(spec, message):
    with pytest.raises(ValueError) as err:
        validate_check(spec, "suite.yaml:7")
    assert str(err.value).startswith(f"suite.yaml:7: {message}")


# ---------------------------------------------------------------- prompt files with checks

def load_file(path: Path):
    return load_prompts({"name": "file", "file": str(path)})


YAML_SUITE = """\
name: mine
items:
  - id: capital
    category: factual
    prompt: Capital of France?
    check: {type: regex, pattern: Paris}
  - id: sum
    category: math
    prompt: 2 + 2?
    check:
      - {type: number, value: 4}
      - {type: contains_all, values: ["4"]}
"""


@pytest.mark.parametrize("name,text", [("suite.yaml", YAML_SUITE),
                                       ("suite.yml", YAML_SUITE.split("items:\n", 1)[1])])  # a bare list
def test_yaml_suite_loads_with_checks(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    capital, total = load_file(path)
    assert capital.check == {"type": "regex", "pattern": "Paris"} and len(total.check) == 2
    assert run_checks(capital.check, "It is Paris.").passed and not run_checks(total.check, "5").passed


def test_jsonl_suite_loads_with_checks(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text('{"id": "a", "category": "math", "prompt": "1+1?", "check": {"type": "number", "value": 2}}\n')
    (prompt,) = load_file(path)
    assert run_checks(prompt.check, "It is 2").passed


BAD_YAML_ITEM = """\
- id: fine
  category: factual
  prompt: Capital of France?
  check: {type: regex, pattern: Paris}
- id: broken
  category: factual
  prompt: Capital of Spain?
  check: {type: regex, pattern: "Madrid("}
"""


@pytest.mark.parametrize("name,text,message", [
    ("s.yaml", BAD_YAML_ITEM, "s.yaml:5: check.pattern: bad regex"),
    ("s.yaml", BAD_YAML_ITEM.replace("  check: {type: regex, pattern: \"Madrid(\"}", "  chek: 1"),
     "s.yaml:5: unknown keys ['chek']"),
    ("s.yaml", "items:\n  - id: a\n    category: c\n  - id: b\n    category: c\n    prompt: p\n",
     "s.yaml:2: missing or empty prompt"),
    ("s.yaml", "items:\n  - id: a\n    category: c\n    prompt: p\n  - id: a\n    category: c\n    prompt: q\n",
     "s.yaml:5: duplicate prompt id 'a' (first at "),
    ("s.yaml", "- id: a\n  category: [c\n", "s.yaml:3: malformed YAML"),
    ("s.yaml", "just a sentence\n", "s.yaml: expected a list of prompt items, or a mapping with `items:`"),
    ("s.yaml", "name: mine\nitem: []\n", "s.yaml: expected a list of prompt items"),
    ("s.yaml", "", "s.yaml: the prompt set is empty"),
    ("s.jsonl", ('{"id": "a", "category": "c", "prompt": "p"}\n'
                 '{"id": "b", "category": "c", "prompt": "q", "check": {"type": "numbr", "value": 1}}\n'),
     "s.jsonl:2: check.type: unknown check type 'numbr'"),
    ("s.jsonl", '{"id": "a", "category": "c", "prompt": "p", "check": [{"type": "exact"}]}\n',
     "s.jsonl:1: check[0].value: missing"),
])
def test_bad_suite_item_names_file_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_file(path)
    assert str(err.value).startswith(f"{tmp_path}/{message}"), str(err.value)


# ---------------------------------------------------------------- the standard suite

STANDARD = load_prompts(load_option("prompts", "standard"))
BY_ID = {p.id: p for p in STANDARD}

# Hand-written answers: id → (a correct answer that must pass, a wrong one that must fail).
ANSWERS: dict[str, tuple[str, str]] = {
    "code_is_palindrome": (
        py("import re\n\ndef is_palindrome(s: str) -> bool:\n    t = re.sub(r'[^a-z0-9]', '', s.lower())\n"
           "    return t == t[::-1]"),
        py("def is_palindrome(s: str) -> bool:\n    return s == s[::-1]")),
    "code_fizzbuzz": (
        py("def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        word = ''\n"
           "        if i % 3 == 0:\n            word += 'Fizz'\n        if i % 5 == 0:\n            word += 'Buzz'\n"
           "        out.append(word or str(i))\n    return out"),
        py("def fizzbuzz(n):\n    return [str(i) for i in range(1, n + 1)]")),
    "code_flatten": (
        py("def flatten(items):\n    flat = []\n    for item in items:\n        if isinstance(item, list):\n"
           "            flat += flatten(item)\n        else:\n            flat.append(item)\n    return flat"),
        py("def flatten(items):\n    return [x for sub in items for x in sub]")),
    "code_word_counts": (
        py("from collections import Counter\nimport re\n\ndef word_counts(text):\n"
           "    return dict(Counter(re.findall(r'[a-z]+', text.lower())))"),
        py("def word_counts(text):\n    counts = {}\n    for w in text.split():\n"
           "        counts[w] = counts.get(w, 0) + 1\n    return counts")),
    "code_binary_search": (
        py("import bisect\n\ndef binary_search(items, target):\n    i = bisect.bisect_left(items, target)\n"
           "    return i if i < len(items) and items[i] == target else -1"),
        py("def binary_search(items, target):\n    lo, hi = 0, len(items)\n    while lo < hi:\n"
           "        mid = (lo + hi) // 2\n        if items[mid] < target:\n            lo = mid + 1\n"
           "        else:\n            hi = mid\n    return lo")),
    "code_gcd": (
        py("def gcd(a: int, b: int) -> int:\n    if b == 0:\n        return a\n    return gcd(b, a % b)"),
        py("def gcd(a, b):\n    return min(a, b)")),
    "code_merge_intervals": (
        py("def merge_intervals(intervals):\n    out = []\n    for s, e in sorted(intervals):\n"
           "        if out and s <= out[-1][1]:\n            out[-1][1] = max(out[-1][1], e)\n        else:\n"
           "            out.append([s, e])\n    return [tuple(x) for x in out]"),
        py("def merge_intervals(intervals):\n    return sorted(intervals)")),
    "code_to_roman": (
        py("def to_roman(n):\n    table = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'),\n"
           "             (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n"
           "    result = []\n    for value, symbol in table:\n        while n >= value:\n"
           "            result.append(symbol)\n            n -= value\n    return ''.join(result)"),
        py("def to_roman(n):\n"
           "    table = [(1000, 'M'), (500, 'D'), (100, 'C'), (50, 'L'), (10, 'X'), (5, 'V'), (1, 'I')]\n"
           "    result = ''\n    for value, symbol in table:\n        while n >= value:\n"
           "            result += symbol\n            n -= value\n    return result")),
    "code_chunks": (
        py("def chunks(items, size):\n    out = []\n    for i in range(0, len(items), size):\n"
           "        out.append(items[i:i + size])\n    return out"),
        py("def chunks(items, size):\n    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]")),
    "code_is_balanced": (
        py("def is_balanced(s):\n    stack = []\n    match = {')': '(', ']': '[', '}': '{'}\n    for ch in s:\n"
           "        if ch in '([{':\n            stack.append(ch)\n        elif ch in match:\n"
           "            if not stack or stack.pop() != match[ch]:\n                return False\n    return not stack"),
        py("def is_balanced(s):\n    return sum(ch in '([{' for ch in s) == sum(ch in ')]}' for ch in s)")),
    "math_percent": ("15% of 240 = 0.15 × 240 = **36**", "15% of 240 is 24."),
    "math_average_speed": ("Speed = distance / time = 180 / 2.5 = 72 km/h.\n\n72", "180 × 2.5 = 450"),
    "math_sum_to_100": ("Pair the numbers: 50 pairs that each sum to 101, so 50 × 101 = 5,050.", "5000"),
    "math_circle_area": ("A = πr² = 9π ≈ 28.27", "A = 2πr ≈ 18.85"),
    "math_compound_interest": ("After 2 years: 1000 × 1.05^2 = $1,102.50", "1000 + 2 × 50 = 1100"),
    "math_linear_equation": ("3x = 25 - 7 = 18, so x = 6", "x = 32/3 ≈ 10.67"),
    "math_light_minute": ("300,000 km/s × 60 s = 1.8e7 km", "300,000 × 60 = 1,800,000 km"),
    "math_hypotenuse": ("c = √(5² + 12²) = √169 = 13", "c = 5 + 12 = 17"),
    "math_mean": ("Sum = 108, count = 6, mean = 108 / 6 = 18.", "The median is 15.5"),
    "math_binary_to_decimal": ("1·32 + 0·16 + 1·8 + 1·4 + 0·2 + 1·1 = 45", "101101 is 91"),
    "fact_capital_australia": ("Canberra.", "Sydney"),
    "fact_gold_symbol": ("Au\n", "Ag"),
    "fact_largest_planet": ("Jupiter is the largest planet in our Solar System.", "Saturn is the largest."),
    "fact_python_creator": ("Python was created by Guido van Rossum.", "Python was created by James Gosling."),
    "fact_http_404": ("404 means Not Found: the server could not find the requested resource.",
                      "404 means the server had an internal error."),
    "fact_dna_bases": ("Adenine (A), Thymine (T), Guanine (G) and Cytosine (C).",
                       "Adenine, uracil, guanine and cytosine."),
    "fact_ww2_end": ("It ended in 1945.", "It ended in 1918."),
    "fact_bits_in_byte": ("There are 8 bits in one byte.", "A byte has 4 bits."),
    "fact_hamlet_author": ("William Shakespeare wrote Hamlet.", "Christopher Marlowe wrote it."),
    "fact_ascii_a": ("The capital letter A is 65 in ASCII (0x41).", "It is 97."),
    "reason_sequence": ("The differences are 4, 6, 8, 10, so the next is 30 + 12 = 42", "The next is 40"),
    "reason_ages": ("Let Ben be b: (b + 8) + (b + 5) = 31, so b = 9.\n\nBen is 9", "Ben is 11"),
    "reason_weekday": ("Saturday", "Friday"),
    "reason_syllogism": ("Yes.", "No, not necessarily."),
    "reason_socks": ("With only two colours, three socks guarantee a pair: 3", "You need 11"),
    "reason_handshakes": ("Each pair shakes once: C(8, 2) = 8 × 7 / 2 = 28", "8 × 7 = 56"),
    "reason_clock_angle": ("Minute hand at 180°, hour hand at 105°: 180 - 105 = 75", "It is 90"),
    "reason_machines": ("One machine makes one widget in 5 minutes, so it still takes 5", "100"),
    "reason_shortest": ("Max", "Sue is the shortest, not Max."),
    "reason_ball_price": ("Ball = b, bat = b + 100 cents; 2b + 100 = 110, so b = 5", "10"),
    "if_three_bullets": ("- Catch bugs early\n- Document behaviour\n- Make refactoring safe\n",
                         "Here are three:\n- Catch bugs early\n- Document behaviour\n- Make refactoring safe"),
    "if_json_release": ('{"language": "Python", "year": 1991}', '{"language": "Python", "year": "1991"}'),
    "if_uppercase_word": ("HELLO", "Hello"),
    "if_yes_or_no": ("Yes", "Yes, 17 is prime."),
    "if_json_primes": ("[2, 3, 5, 7, 11]", "[1, 2, 3, 5, 7]"),
    "if_five_words": ("Soft, curious, independent, graceful hunter.", "A cat is a small furry animal."),
    "if_start_word": ("Certainly! A variable is a name bound to a value.", "A variable is a name bound to a value."),
    "if_numbered_steps": ("1. Boil water.\n2. Add a tea bag.\n3. Pour and steep.\n4. Remove the bag.",
                          "1. Boil water.\n2. Add a tea bag.\n3. Pour and steep."),
    "if_json_landmark": ('```json\n{"city": "Paris", "country": "France"}\n```', '{"city": "Paris"}'),
    "if_lowercase_only": ("memory is where a computer keeps the data it is working on.",
                          "Memory is where a computer keeps data."),
    "tech_binary_search_complexity": ("O(log n): each step halves the remaining search range.",
                                      "It is O(n) because it checks every element."),
    "tech_tcp_vs_udp": ("TCP is connection-oriented and reliable; UDP is connectionless and best-effort.",
                        "TCP is faster than UDP."),
    "tech_merge_vs_rebase": ("Merge adds a merge commit and keeps history; rebase rewrites history linearly.",
                             "They are the same thing."),
    "tech_mutex": ("A mutex is a lock that lets one thread at a time use shared data, preventing race conditions.",
                   "A mutex is a kind of variable."),
    "tech_dns": ("DNS maps domain names to IP addresses.", "DNS encrypts web traffic."),
    "tech_garbage_collection": ("It finds unreachable objects and reclaims their memory automatically.",
                                "It deletes old files from disk."),
    "tech_idempotent_http": ("Repeating the request has the same effect as sending it once, e.g. PUT.",
                             "It means the method is fast."),
    "tech_quantization": ("It stores weights in fewer bits (e.g. 4-bit), which makes the model smaller and faster.",
                          "It is a training technique for neural networks."),
    "tech_stack_overflow": ("Each call pushes a frame on the call stack, which has a fixed size limit.",
                            "Because recursion is slow."),
    "tech_db_index": ("An index is a sorted B-tree for fast lookups; it costs extra disk space and slower writes.",
                      "An index makes everything faster at no cost."),
}


def test_standard_suite_loads():
    categories = {p.category for p in STANDARD}
    assert 55 <= len(STANDARD) <= 65 and len(categories) >= 6
    assert {"code", "math", "factual", "reasoning", "instruction_following", "technical_explanation"} <= categories
    assert all(p.check is not None and p.reference for p in STANDARD)
    kinds = {c["type"] for p in STANDARD for c in (p.check if isinstance(p.check, list) else [p.check])}
    assert kinds == set(checks._RUNNERS)


def test_every_standard_item_has_hand_written_answers():
    assert set(ANSWERS) == set(BY_ID)


@pytest.mark.parametrize("prompt_id", sorted(ANSWERS))
def test_standard_good_answer_passes_and_bad_answer_fails(prompt_id):
    good, bad = ANSWERS[prompt_id]
    check = BY_ID[prompt_id].check
    assert run_checks(check, good).passed, run_checks(check, good)
    assert not run_checks(check, bad).passed, run_checks(check, bad)


@pytest.mark.parametrize("prompt", STANDARD, ids=lambda p: p.id)
def test_standard_reference_passes_its_own_check(prompt):
    answer = py(prompt.reference) if prompt.category == "code" else prompt.reference
    result = run_checks(prompt.check, answer)
    assert result.passed, result


def test_every_standard_check_runs_on_junk_without_raising():
    for prompt in STANDARD:
        result = run_checks(prompt.check, "I am not sure. ```\n```")
        assert result.passed is False and result.detail, prompt.id


def test_code_prompts_name_the_function_the_tests_call():
    for prompt in STANDARD:
        if prompt.category == "code":
            name = re.search(r"`(\w+)\(", prompt.prompt).group(1)
            assert f"{name}(" in prompt.check["tests"], prompt.id
