"""Run untrusted Python (a model's answer) where it cannot reach the runner: the kernel half of `python_tests`.

`run_python(source, stdin, ...)` runs `python -I -c source` in a child and returns how it ended, what it wrote on
fd 3 (the channel runner/checks.py reads its evidence from) and the tail of its output. The child always gets an
empty environment, a fresh working dir, rlimits (CPU seconds, address space, processes, file size, open files,
no core dumps) and a wall-clock timeout after which everything it started is killed.

How much more it gets is chosen once per process (`plan()`), the strongest that works here:

* **namespaces** (Linux with user namespaces): new user, PID, mount, network, IPC and UTS namespaces. Inside, the
  child is uid 0 without any capability (bounding set emptied, securebits NOROOT locked, no_new_privs); outside
  it is `nobody` when the runner is root, else the runner's own uid (so RLIMIT_NPROC applies to it: the kernel
  exempts root only). Its root (read-only, laid out by the runner) shows only /usr, /bin, /sbin, /lib*,
  /etc/ld.so.cache and the interpreter's prefixes (read-only binds), /dev/{null,zero,full,random,urandom} and a
  writable /tmp (its working dir, fresh per run). Nothing else: no /proc, /sys, /home, no other file of /etc or
  of the runner's home, so no other process, no runner environment, no file of the runner's user. The network
  namespace has only a loopback that is down: no connection anywhere. Its PID 1 is our own init (never the
  answer's code); when it exits or is killed, the kernel kills every process of the namespace, `setsid` and
  double forks included.
* **plain** (no user namespaces: macOS, containers whose seccomp refuses `unshare`, kernels without them): the
  child runs as `nobody` when the runner is root and the interpreter runs as nobody, else as the runner's user,
  in its own session, killed when its parent dies (PR_SET_PDEATHSIG on Linux). The files of that user, and
  /proc/<pid>/environ of its processes (the runner's, the shell's), are then readable by native code: only the
  harness's Python-level guard (runner/harness.py) refuses them. `plan()` logs one warning when it falls back.

Process tree: runner → init (runner/sandbox_init.py: trusted, never runs the answer's code; in the host's PID
namespace, so the answer cannot see or signal it) → [namespaces: PID 1 of the new namespace, also ours] → the
child running `source`. The init reports the child's wait status, or why the sandbox could not be set up, on a
pipe only it holds: an answer cannot fake an "error" or a "signal".
"""

from __future__ import annotations

import logging
import marshal
import math
import os
import pwd
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

NPROC_HEADROOM = 16  # processes (threads on Linux) the child may add
_FSIZE_BYTES = 16 * 2**20
_NOFILE = 64
CHANNEL_CAP = 2**20  # bytes of fd 3 kept; more is read and dropped, so a flood cannot block the writer
_OUTPUT_TAIL = 2000
_INIT = Path(__file__).with_name("sandbox_init.py")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache")  # read-only
_DEVICES = ("null", "zero", "full", "random", "urandom")


@dataclass(frozen=True)
class Outcome:
    """How a sandboxed run ended. `status` exited / signaled: `code` is the exit status / signal number;
    timeout: killed at the deadline; error: the sandbox itself failed (`error` says why)."""

    status: Literal["exited", "signaled", "timeout", "error"]
    code: int = 0
    channel: bytes = b""  # what the child wrote on fd 3 (the first `CHANNEL_CAP` bytes)
    output: str = ""  # the tail of its stdout and stderr
    error: str = ""


@dataclass(frozen=True)
class Plan:
    """The isolation `run_python` sets up. `user`: namespaces: the (uid, gid) outside that the child's uid 0 maps
    to (None: the runner's own); plain: the user the child switches to (None: stays the runner's user)."""

    namespaces: bool
    user: tuple[int, int] | None


_PLAN: Plan | None = None
_PLAN_LOCK = threading.Lock()


def plan() -> Plan:
    """The strongest isolation that works here, probed once per process (a trivial run through the sandbox)."""
    global _PLAN
    with _PLAN_LOCK:
        if _PLAN is None:
            _PLAN = _choose_plan()
        return _PLAN


def _choose_plan() -> Plan:
    nobody = _nobody()
    if sys.platform.startswith("linux"):
        candidate = Plan(True, nobody if os.geteuid() == 0 else None)
        probe = run_python("", b"", timeout_s=30, memory_mb=512, plan_=candidate)
        if probe.status == "exited" and probe.code == 0:
            return candidate
        why = probe.error or f"a trivial run ended {probe.status} {probe.code}: {probe.output[-300:]}"
    else:
        why = f"{sys.platform} has no user namespaces"
    user = _plain_user(nobody)
    who = "user nobody" if user else f"the runner's user (uid {os.geteuid()})"
    log.warning("python_tests checks run without namespaces (%s): the answers' code runs as %s, can read that "
                "user's files and, past a Python-level guard, /proc/<pid>/environ of that user's processes "
                "(the runner's environment and its secrets)", why, who)
    return Plan(False, user)


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _plain_user(nobody: tuple[int, int]) -> tuple[int, int] | None:
    """Without namespaces, root drops to nobody when the interpreter runs as nobody (RLIMIT_NPROC never
    applies to root, and root reads every file); anyone else stays who they are."""
    if os.geteuid() != 0:
        return None
    try:
        probe = subprocess.run([sys.executable, "-I", "-c", ""], user=nobody[0], group=nobody[1], extra_groups=[],
                               env={}, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30, check=False)
        return nobody if probe.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------- the runner's side

def run_python(source: str, stdin: bytes, *, timeout_s: float, memory_mb: int, plan_: Plan | None = None) -> Outcome:
    """Run `python -I -c source` in the sandbox with `stdin` on fd 0 and a pipe to us on fd 3; never raises."""
    chosen = plan_ or plan()
    try:
        with tempfile.TemporaryDirectory(prefix="runner-sandbox-", ignore_cleanup_errors=True) as tmp:
            return _run(Path(tmp), chosen, source, stdin, timeout_s, memory_mb)
    except (OSError, subprocess.SubprocessError) as e:
        return Outcome("error", error=f"{type(e).__name__}: {e}")


def _run(tmp: Path, chosen: Plan, source: str, stdin: bytes, timeout_s: float, memory_mb: int) -> Outcome:
    work, root = tmp / "work", tmp / "root"
    work.mkdir()
    root.mkdir()
    if chosen.user is not None and os.geteuid() == 0:
        os.chown(work, *chosen.user)
    config = {"namespaces": chosen.namespaces, "user": chosen.user, "python": sys.executable,
              "args": ["-I", "-c", source], "work": str(work), "root": str(root),
              "mounts": _skeleton(root, work) if chosen.namespaces else [],
              "limits": _limits(timeout_s, memory_mb, chosen)}
    channel_r, channel_w = os.pipe()
    control_r, control_w = os.pipe()
    try:
        try:
            with open(tmp / "output.txt", "wb") as output:
                # Output goes to a file, not a pipe: whatever the child leaves behind cannot block a read of it.
                argv = [sys.executable, "-I", "-S", str(_INIT),
                        marshal.dumps(config | {"channel": channel_w, "control": control_w}).hex()]
                proc = subprocess.Popen(argv, cwd=tmp, env={}, stdin=subprocess.PIPE, stdout=output,
                                        stderr=subprocess.STDOUT, pass_fds=(channel_w, control_w),
                                        start_new_session=True)
        finally:
            os.close(channel_w)
            os.close(control_w)
        try:
            channel, control, timed_out = _exchange(proc, stdin, channel_r, control_r, time.monotonic() + timeout_s)
        finally:
            _kill_group(proc.pid)  # also what the child left behind (without namespaces: what stayed in its session)
            proc.wait()
    finally:
        os.close(channel_r)
        os.close(control_r)
    output_text = (tmp / "output.txt").read_bytes()[-_OUTPUT_TAIL:].decode(errors="replace")
    if timed_out:
        return Outcome("timeout", channel=channel, output=output_text)
    return _ended(control, channel, output_text)


def _exchange(proc: subprocess.Popen, stdin: bytes, channel_r: int, control_r: int,
              deadline: float) -> tuple[bytes, bytes, bool]:
    """Feed stdin, collect fd 3 and the init's report until the init closes its report pipe (it exits) or the
    deadline passes. Returns (channel, report, timed out)."""
    assert proc.stdin is not None
    stdin_fd = proc.stdin.fileno()
    channel, control = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        for fd in (stdin_fd, channel_r, control_r):
            os.set_blocking(fd, False)
        if stdin:
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        sel.register(channel_r, selectors.EVENT_READ)
        sel.register(control_r, selectors.EVENT_READ)
        pending = memoryview(stdin)
        while control_r in sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(channel), bytes(control), True
            for key, _ in sel.select(remaining):
                if key.fd == stdin_fd:
                    try:
                        pending = pending[os.write(stdin_fd, pending[:65536]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                chunk = _read(key.fd)
                if chunk is None:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                elif key.fd == channel_r:
                    channel += chunk[:max(0, CHANNEL_CAP - len(channel))]
                else:
                    control += chunk
        if not proc.stdin.closed:
            proc.stdin.close()
    while (chunk := _read(channel_r)) and len(channel) < CHANNEL_CAP:  # what is left (leftovers may hold it open)
        channel += chunk[:CHANNEL_CAP - len(channel)]
    return bytes(channel), bytes(control), False


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


def _ended(control: bytes, channel: bytes, output: str) -> Outcome:
    """The init's report (`status <wait status>` or `error <why>`, runner/sandbox_init.py); an error first."""
    reports = [line.partition(" ")[::2] for line in control.decode(errors="replace").splitlines()]
    if errors := [rest for kind, rest in reports if kind == "error"]:
        return Outcome("error", channel=channel, output=output, error=errors[0])
    statuses = [int(rest) for kind, rest in reports if kind == "status" and rest.isdigit()]
    if not statuses:
        return Outcome("error", channel=channel, output=output,
                       error="the sandbox ended without a report" + (f": {output.strip()[-300:]}" if output else ""))
    code = os.waitstatus_to_exitcode(statuses[0])
    return Outcome("signaled" if code < 0 else "exited", abs(code), channel, output)


def _skeleton(root: Path, work: Path) -> list[tuple[str, str, str]]:
    """Lay out the child's root on disk: a mount point for each bind, the symlinks (/lib → usr/lib). Built here,
    by the runner, because inside the namespace a mapped user cannot create files for an unmapped owner.
    Returns (source, mount point, ro | rw | dev) for the sandbox's PID 1."""
    wanted = [*_SYSTEM_DIRS, sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))]
    paths = sorted({p for p in wanted if os.path.lexists(p)} | {os.path.realpath(p) for p in wanted if
                                                                 os.path.lexists(p)})
    # The work dir is the child's /tmp, bound first: an interpreter under /tmp (a venv in a scratch clone) is then
    # bound on top of it, its mount point made in the work dir (a point made in the root's /tmp would be hidden).
    _mount_point(f"{root}/tmp", True)
    mounts: list[tuple[str, str, str]] = [(str(work), f"{root}/tmp", "rw")]
    done: list[str] = []
    for path in paths:
        if any(path == d or path.startswith(d.rstrip("/") + "/") for d in done):
            continue
        done.append(path)
        target = str(root) + path
        made = str(work) + path[len("/tmp"):] if path.startswith("/tmp/") else target
        _makedirs(os.path.dirname(made))
        real = os.path.realpath(path)
        if real != path:  # a symlink, or a path through one: a link in the new root
            os.symlink(os.readlink(path) if os.path.islink(path) else real, made)
        else:
            _mount_point(made, os.path.isdir(path))
            mounts.append((path, target, "ro"))
    for name in _DEVICES:
        _makedirs(f"{root}/dev")
        _mount_point(f"{root}/dev/{name}", False)
        mounts.append((f"/dev/{name}", f"{root}/dev/{name}", "dev"))
    return mounts


def _makedirs(path: str) -> None:
    if not os.path.isdir(path):
        _makedirs(os.path.dirname(path))
        os.mkdir(path)
        os.chmod(path, 0o755)  # whatever the umask: the sandbox's user must get through


def _mount_point(path: str, is_dir: bool) -> None:
    if is_dir:
        _makedirs(path)
    else:
        Path(path).touch()
        os.chmod(path, 0o644)


def _limits(timeout_s: float, memory_mb: int, chosen: Plan) -> list[tuple[int, int, int]]:
    """The rlimits for the child, each capped by the current hard limit (an unprivileged parent cannot raise it)."""
    cpu = cpu_seconds(timeout_s)
    memory = memory_mb * 2**20
    wanted = [(resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
              (resource.RLIMIT_AS, memory, memory), (resource.RLIMIT_FSIZE, _FSIZE_BYTES, _FSIZE_BYTES),
              (resource.RLIMIT_NOFILE, _NOFILE, _NOFILE), (resource.RLIMIT_CORE, 0, 0)]
    if chosen.namespaces:  # counted in the new user namespace: its init, the sandbox's PID 1, the child
        wanted.append((resource.RLIMIT_NPROC, NPROC_HEADROOM + 3, NPROC_HEADROOM + 3))
    else:
        uid = chosen.user[0] if chosen.user else os.getuid()
        if uid != 0:  # the kernel never applies it to root
            count = _task_count(uid) + NPROC_HEADROOM
            wanted.append((resource.RLIMIT_NPROC, count, count))

    def capped(res: int, value: int) -> int:
        hard = resource.getrlimit(res)[1]
        return value if hard == resource.RLIM_INFINITY else min(value, hard)

    return [(res, capped(res, soft), capped(res, hard)) for res, soft, hard in wanted]


def cpu_seconds(timeout_s: float) -> int:
    """The CPU limit: a second past the wall-clock timeout, so it only decides for code that uses several
    cores at once (or for a process that escaped the kill)."""
    return math.ceil(timeout_s) + 1


def _task_count(uid: int) -> int:
    """Tasks whose real uid is `uid`: threads on Linux (what RLIMIT_NPROC counts there), else processes.
    Without namespaces the limit counts every process of the user, not only the child's."""
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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
