"""The `python_tests` harness: the child's program inside the sandbox (runner/sandbox.py). Never imported by the
runner: runner/checks.py reads this file and runs it with `exec` in a dict whose `__builtins__` is a private copy
of the builtins, so every builtin named below is the original, whatever the answer does to `builtins` later.

stdin: marshal data (key, solution, tests). It runs the answer's code as module `solution`, then each top-level
statement of the tests, compiled before the answer's code ran, and writes one line on fd 3:
`<key> <1 passed | 0 failed> <statements completed> <detail as UTF-8 hex>`. What this guarantees, and what
it does not, is in runner/checks.py (`_run_python_tests`). The rule that makes it hold: once the answer's
code has run, this code touches only its own locals and the private builtins, never a module attribute.
"""


def _main() -> None:
    import _ast
    import _posixsubprocess
    import _signal
    import _socket
    import builtins
    import marshal
    import os
    import sys

    data = b""
    while chunk := os.read(0, 1 << 16):
        data += chunk
    key, solution, tests = marshal.loads(data)  # from the runner, before any untrusted code: marshal is safe here
    del data
    devnull = os.open(os.devnull, os.O_RDWR)  # stdin was the key's pipe: the answer reads nothing from it
    os.dup2(devnull, 0)
    os.close(devnull)

    # Everything used after the answer's code ran, taken now.
    write, stat, exit_now, modules, af_unix = os.write, os.stat, os._exit, sys.modules, _socket.AF_UNIX
    private_builtins = dict(vars(builtins))
    lines = tests.splitlines()
    tree = compile(tests, "tests.py", "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
    steps = [compile(_ast.Module([stmt], []), "tests.py", "exec", dont_inherit=True, optimize=0) for stmt in tree.body]
    del tree
    try:
        proc_dev = stat("/proc").st_dev  # without namespaces /proc is the host's
    except OSError:
        proc_dev = None

    def refuse(what: str, error: type = OSError):
        def refused(*args, **kwargs):
            raise error(what)
        return refused

    # Not audited by the interpreter: patched, and re-importing the module is refused below (`signal.signal`
    # calls `_signal.signal`; ValueError is what asyncio and others expect where handlers cannot be set).
    _posixsubprocess.fork_exec = refuse("process creation disabled")
    _signal.signal = refuse("signal handlers are refused in the sandbox (they get the harness's frames)", ValueError)

    no_process = (OSError, "process creation disabled")
    no_network = (OSError, "network disabled")
    no_introspection = (ValueError, "refused in the sandbox: it reaches the harness's frames or objects")
    refused_events = {
        **dict.fromkeys(("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                         "os.startfile", "subprocess.Popen"), no_process),
        **dict.fromkeys(("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
                         "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
                         "socket.sethostname"), no_network),
        **dict.fromkeys(("sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
                         "sys.setprofile", "sys.monitoring.register_callback", "gc.get_objects",
                         "gc.get_referrers", "gc.get_referents"), no_introspection),
        "sys.addaudithook": (RuntimeError, "audit hooks are refused in the sandbox"),  # RuntimeError: ignored
    }
    frame_attributes = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame"))
    guarded_modules = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "_signal", "_imp"))

    def audit(event: str, args: tuple) -> None:
        """Refuses what would reach the harness (frames, gc, tracing, ctypes), the network and new processes.
        An exception here makes the audited operation raise it: anything unexpected refuses (fails closed)."""
        if event in refused_events:
            error, message = refused_events[event]
            raise error(message if error is not ValueError else f"{event} {message}")
        if event == "object.__getattr__" and args[1] in frame_attributes:
            raise ValueError(f"{args[1]} {no_introspection[1]}")
        if event == "import":
            name = str.__str__(args[0])
            if name in guarded_modules or name.startswith(("ctypes.", "_test")):
                raise ImportError(f"import of {name} is refused in the sandbox")
        if event == "socket.__new__" and args[1] != af_unix:  # socketpair (asyncio) stays
            raise OSError(no_network[1])
        if event == "socket.sendmsg" and args[1] is not None:
            raise OSError(no_network[1])
        if event == "open" and proc_dev is not None and args[0] is not None and not isinstance(args[0], int):
            try:
                inside = stat(args[0]).st_dev == proc_dev
            except (OSError, ValueError):
                inside = False
            if inside:
                raise PermissionError(f"{args[0]!r}: /proc is refused in the sandbox")

    sys.addaudithook(audit)

    module = type(sys)("solution")  # not __main__: the answer's `if __name__ == "__main__":` stays off
    modules["solution"] = module
    globals_ = module.__dict__  # the real one, whatever the answer makes `module.__dict__` say
    passed, ran, detail = False, 0, ""
    try:
        exec(compile(solution, "solution.py", "exec", dont_inherit=True, optimize=0), globals_)
    except BaseException as exc:
        globals_.clear()  # frees what a memory hog kept, so the report can be written
        detail = describe(exc, None) + " (while running the answer's code)"
    else:
        namespace = dict(globals_)  # the tests see the answer's names, with builtins from before it ran
        namespace["__builtins__"] = private_builtins
        for step in steps:
            try:
                exec(step, namespace)
            except BaseException as exc:
                namespace.clear()
                globals_.clear()
                detail = describe(exc, lines)
                break
            ran += 1
        else:
            passed, detail = True, "all tests passed"
    evidence = str.encode(detail, "utf-8", "replace")[:1500].hex()  # one write under PIPE_BUF: atomic
    write(3, f"{key} {1 if passed else 0} {ran} {evidence}\n".encode())
    exit_now(0)  # no atexit, no waiting for the answer's threads


def describe(exc: BaseException, lines: list[str] | None) -> str:
    """`Type: message (tests line N: source)`; the answer's `__str__` may misbehave, so everything is guarded."""
    try:
        text = str.__str__(str(exc))
        name = str.__str__(str(type(exc).__name__))
        text = f"{name}: {text}" if text else name
    except BaseException:
        text = "an exception whose description failed"
    text = text if len(text) <= 300 else text[:300] + "..."
    tb = BaseException.__traceback__.__get__(exc)
    if lines is None or tb is None or tb.tb_next is None:
        return text
    line = tb.tb_next.tb_lineno  # the test statement's own frame (tb is the harness's)
    if line is None or not 0 < line <= len(lines):
        return text
    return f"{text} (tests line {line}: {lines[line - 1].strip()})"


if __name__ == "harness":  # run by runner/checks.py's bootstrap; importing runner.harness runs nothing
    _main()
