"""The sandbox's init: run by runner/sandbox.py as `python -I -S sandbox_init.py <config>`, never imported.

It sets up the isolation its config asks for, runs the child, and reports on the `control` pipe, which only it
holds, one line: `status <wait status>` or `error <why>`. It is trusted code and never runs the answer's code.
With namespaces it stays in the host's PID namespace (the answer cannot see or signal it) and forks the new
namespace's PID 1, also ours, which builds the root, drops to the unprivileged user and forks the child.

Lean on purpose (it starts once per check): builtin modules and ctypes only; the config comes as marshal data.
"""

import fcntl
import marshal
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 4, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SECUREBITS_LOCKED_NOROOT = 0xEF  # NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE, their locks, KEEP_CAPS locked off
CHANNEL_FD = 3


def main() -> None:
    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    control = fcntl.fcntl(config["control"], fcntl.F_DUPFD_CLOEXEC, 10)
    channel = fcntl.fcntl(config["channel"], fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(config["control"])
    os.close(config["channel"])
    try:
        status = in_namespaces(config, channel, control) if config["namespaces"] else plain(config, channel, control)
        report(control, f"status {status}")
    except Exception as e:  # the sandbox could not be set up
        report(control, f"error sandbox: {e}")
    os._exit(0)


def report(fd: int, line: str) -> None:
    os.write(fd, (line.replace("\n", " ") + "\n").encode())


def libc():  # type: ignore[no-untyped-def]
    """`call(name, *args)`: a libc function, ints passed as unsigned long; OSError on a negative result."""
    import ctypes

    lib = ctypes.CDLL(None, use_errno=True)

    def call(name: str, *args: object) -> int:
        result = getattr(lib, name)(*(ctypes.c_ulong(a) if isinstance(a, int) else a for a in args))
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}: {os.strerror(err)}")
        return result

    return call


def plain(config: dict, channel: int, control: int) -> int:
    if sys.platform.startswith("linux"):
        libc()("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)  # the child, same user, cannot ptrace us or open our fds
    child = os.fork()
    if child == 0:
        exec_child(config, channel, control, None)
    return os.waitpid(child, 0)[1]


def in_namespaces(config: dict, channel: int, control: int) -> int:
    call = libc()
    me, user = os.getpid(), config["user"]
    helper = go_w = done_r = None
    if user is not None:  # uid 0 inside → nobody outside: only a process left outside may write that map
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        helper = os.fork()
        if helper == 0:
            ok = b"0"
            try:
                if os.read(go_r, 1) == b"1":
                    write(f"/proc/{me}/uid_map", f"0 {user[0]} 1")
                    write(f"/proc/{me}/gid_map", f"0 {user[1]} 1")
                    ok = b"1"
            finally:
                os.write(done_w, ok)
                os._exit(0)
        os.close(go_r)
        os.close(done_w)
    try:
        call("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
        if helper is None:
            uid, gid = os.geteuid(), os.getegid()
            write("/proc/self/setgroups", "deny")
            write("/proc/self/uid_map", f"0 {uid} 1")
            write("/proc/self/gid_map", f"0 {gid} 1")
        else:
            os.write(go_w, b"1")
            if os.read(done_r, 1) != b"1":
                raise OSError("could not map the sandbox's user to the user outside")
    finally:
        if helper is not None:
            os.close(go_w)
            os.close(done_r)
            os.waitpid(helper, 0)
    call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
    status_r, status_w = os.pipe()
    pid1 = os.fork()
    if pid1 == 0:
        os.close(status_r)
        os.close(control)
        pid_1(config, call, channel, status_w, privileged_map=user is not None)
    os.close(status_w)
    os.close(channel)
    lines = b""
    while chunk := os.read(status_r, 4096):
        lines += chunk
    os.waitpid(pid1, 0)
    for line in lines.decode(errors="replace").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "error":
            raise OSError(rest)
        if kind == "status":
            return int(rest)
    raise OSError("the sandbox's PID 1 ended without a report")


def pid_1(config: dict, call, channel: int, status_w: int,  # type: ignore[no-untyped-def]
          privileged_map: bool) -> None:
    """PID 1 of the new namespaces: build the root, become the unprivileged user, run the child, reap."""
    try:
        build_root(config, call)
        if privileged_map:
            os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        call("sethostname", b"sandbox", 7)
        call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores default-action signals from inside
        child = os.fork()
        if child == 0:
            exec_child(config, channel, status_w, call)
        os.close(channel)
        while True:  # orphans are re-parented here: reap them too
            pid, status = os.wait()
            if pid == child:
                break
        report(status_w, f"status {status}")
    except BaseException as e:
        report(status_w, f"error {type(e).__name__}: {e}")
    os._exit(0)  # the kernel now kills whatever the child left in the namespace


def build_root(config: dict, call) -> None:  # type: ignore[no-untyped-def]
    """Bind what the runner laid out (runner/sandbox.py `_skeleton`), make the root read-only, enter it."""
    def mount(source: str | None, target: str, flags: int) -> None:
        call("mount", None if source is None else source.encode(), target.encode(), None, flags, None)

    root = config["root"]
    mount(None, "/", MS_REC | MS_PRIVATE)  # nothing mounted here propagates back to the host
    mount(root, root, MS_BIND)
    for source, target, mode in config["mounts"]:
        mount(source, target, MS_BIND | (MS_REC if mode == "ro" else 0))
        if mode != "dev":
            mount(None, target, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if mode == "ro" else 0)
                  | locked_flags(source))
    mount(None, root, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | locked_flags(root))
    os.chroot(root)
    os.chdir("/tmp")


def locked_flags(path: str) -> int:
    """The flags a bind mount's remount must keep inside a user namespace (the kernel locks them)."""
    flags = os.statvfs(path).f_flag
    return ((MS_NOEXEC if flags & os.ST_NOEXEC else 0) | (MS_NOATIME if flags & os.ST_NOATIME else 0)
            | (MS_NODIRATIME if flags & os.ST_NODIRATIME else 0) | (MS_RELATIME if flags & os.ST_RELATIME else 0))


def exec_child(config: dict, channel: int, errors: int, call) -> None:  # type: ignore[no-untyped-def]
    """In the forked child: drop what it must not have, set the limits, exec the interpreter. Never returns.
    `call` given: inside the namespaces (drop every capability); None: plain (switch user, die with the init)."""
    try:
        if call is not None:
            for cap in range(64):
                try:
                    call("prctl", PR_CAPBSET_DROP, cap, 0, 0, 0)
                except OSError:  # past the kernel's last capability
                    break
            call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
            call("prctl", PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, 0, 0, 0)
            call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        else:
            parent = os.getppid()
            if sys.platform.startswith("linux"):
                libc()("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != parent:  # the init died before the line above
                    os._exit(1)
            os.chdir(config["work"])
            if config["user"] is not None:
                os.setgroups([])
                os.setgid(config["user"][1])
                os.setuid(config["user"][0])
        for res, soft, hard in config["limits"]:
            resource.setrlimit(res, (soft, hard))
        os.dup2(channel, CHANNEL_FD)
        os.execve(config["python"], [config["python"], *config["args"]], {})
    except BaseException as e:
        try:
            report(errors, f"error starting the child: {type(e).__name__}: {e}")
        finally:
            os._exit(127)


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
