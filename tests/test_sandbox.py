"""The sandbox itself (runner/sandbox.py), without the python_tests harness: raw code, no Python-level guard, so
what holds here is the kernel's doing (namespaces, rlimits, the kill)."""

from __future__ import annotations

import ast
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from runner import sandbox
from test_checks import reaper  # noqa: F401 - a fixture

BEST = sandbox.plan()
needs_namespaces = pytest.mark.skipif(not BEST.namespaces, reason="no user namespaces here")


def run(code: str, timeout_s: float = 5, plan: sandbox.Plan | None = None) -> sandbox.Outcome:
    return sandbox.run_python(code, b"", timeout_s=timeout_s, memory_mb=512, plan_=plan)


@needs_namespaces
def test_the_child_sees_only_its_own_root():
    outcome = run("import os\n"
                  "for path in ('/', '/etc', '/dev'):\n    print(sorted(os.listdir(path)))\n"
                  "for path in ('/x', '/usr/x', '/tmp/x'):\n"
                  "    try:\n        open(path, 'w').close()\n        print('written')\n"
                  "    except OSError as e:\n        print(e.errno)\n")
    assert (outcome.status, outcome.code) == ("exited", 0), outcome
    top, etc, dev, *writes = outcome.output.splitlines()
    assert not {"proc", "sys", "home", "run", "var", "opt"} & set(ast.literal_eval(top)), top
    assert ast.literal_eval(etc) == (["ld.so.cache"] if os.path.exists("/etc/ld.so.cache") else [])
    assert ast.literal_eval(dev) == ["full", "null", "random", "urandom", "zero"]
    assert writes == ["30", "30", "written"]  # EROFS, except in its own /tmp


@needs_namespaces
def test_the_child_has_no_privilege():
    outcome = run("import os, stat\nfor attempt in (lambda: os.chroot('/'), lambda: os.mknod('/tmp/n', "
                  "stat.S_IFCHR | 0o600, os.makedev(1, 3)), lambda: os.setgroups([])):\n    try:\n"
                  "        attempt()\n        print('allowed')\n    except OSError as e:\n        print(e.errno)")
    assert outcome.output.split() == ["1", "1", "1"], outcome  # EPERM each


@needs_namespaces
def test_no_network_at_the_kernel_level():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0)
        code = (f"import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
                f"try:\n    s.connect(('127.0.0.1', {listener.getsockname()[1]}))\n    print('connected')\n"
                f"except OSError as e:\n    print(e.errno)")
        outcome = run(code)
        assert outcome.output.split() == ["101"], outcome  # ENETUNREACH: its loopback is down
        with pytest.raises(BlockingIOError):
            listener.accept()


@needs_namespaces
def test_processes_are_capped_by_the_kernel():
    """RLIMIT_NPROC holds against raw forks: the child is no root outside (the kernel exempts only root)."""
    code = ("import posix, time\nborn = 0\nfor _ in range(100):\n    try:\n        pid = posix.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        posix._exit(0)\n"
            "    born += 1\nprint(born, flush=True)\nposix._exit(0)")
    outcome = run(code)
    assert 0 < int(outcome.output.split()[-1]) <= sandbox.NPROC_HEADROOM + 3, outcome


@needs_namespaces
def test_nothing_outlives_the_sandbox(reaper):  # noqa: F811
    """A grandchild in its own session, its parent gone: killed with the namespace at the timeout."""
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n"
            "    os._exit(0)\ntime.sleep(30)")
    start = time.monotonic()
    outcome = run(code, timeout_s=1)
    assert outcome.status == "timeout" and time.monotonic() - start < 3
    assert reaper() == []


@needs_namespaces
def test_outside_the_child_is_nobody_or_the_runners_user():
    marker = f"sandbox-uid-{os.getpid()}-{time.monotonic_ns()}"
    done = threading.Event()
    thread = threading.Thread(target=lambda: (run(f"import time\n# {marker}\ntime.sleep(2)"), done.set()))
    thread.start()
    uids: list[str] = []
    while not uids and not done.is_set():
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
                if argv[1:3] == [b"-I", b"-c"] and marker.encode() in argv[3]:  # the child, not the init
                    status = (cmdline.parent / "status").read_text()
                    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
            except (OSError, StopIteration):
                continue
        time.sleep(0.05)
    thread.join()
    expected = sandbox._nobody()[0] if os.geteuid() == 0 else os.geteuid()
    assert uids == [str(expected)] * 4


NOBODY_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(os.geteuid() != 0 or not NOBODY_PYTHON.exists(), reason="needs root and a system Python")
def test_without_namespaces_root_runs_the_child_as_nobody_under_a_process_cap(monkeypatch):
    """The fallback: RLIMIT_NPROC never applies to root, so the child runs as nobody when the interpreter
    allows it; raw forks stay within the cap."""
    monkeypatch.setattr(sys, "executable", str(NOBODY_PYTHON))
    user = sandbox._plain_user(sandbox._nobody())
    if user is None:
        pytest.skip(f"{NOBODY_PYTHON} does not run as nobody here")
    plain = sandbox.Plan(False, user)
    outcome = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())", plan=plain)
    assert outcome.output.strip() == f"{user[0]} {user[1]} []", outcome
    code = ("import posix, time\nborn = 0\nfor _ in range(100):\n    try:\n        pid = posix.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        posix._exit(0)\n"
            "    born += 1\nprint(born, flush=True)\nposix._exit(0)")
    outcome = run(code, plan=plain)
    assert 0 < int(outcome.output.split()[-1]) <= sandbox.NPROC_HEADROOM, outcome


@pytest.mark.skipif(os.geteuid() != 0 or not BEST.namespaces, reason="needs root and user namespaces")
def test_a_sandbox_that_cannot_be_set_up_is_an_error():
    outcome = run("", plan=sandbox.Plan(True, (2**32 - 1, 2**32 - 1)))  # (uid_t) -1: never mapped
    assert outcome.status == "error" and "could not map" in outcome.error, outcome


def test_the_channel_and_the_exit_status_come_back():
    outcome = sandbox.run_python("import os, sys\nos.write(3, sys.stdin.buffer.read()[::-1])\nsys.exit(7)",
                                 b"olleh", timeout_s=5, memory_mb=512)
    assert (outcome.status, outcome.code, outcome.channel) == ("exited", 7, b"hello"), outcome
    outcome = sandbox.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", b"", timeout_s=5,
                                 memory_mb=512)
    assert (outcome.status, outcome.code) == ("signaled", 15), outcome
