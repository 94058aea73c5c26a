"""A fork server for the suite's CLI children: real processes without the interpreter start-up.

Each killed child and each CLI subprocess of the suite used to pay a Python start-up and the
imports of apsw, msgspec, transitions, blake3, click and our core (~0.3 s of cpu), well over a
thousand times a run. Here one server process per pytest worker (started on first use, never
the worker itself: it has threads) imports everything a command can import, once, and forks a
child per command line. The child is a real process: it gets its own stdin/stdout/stderr (fds
passed over a unix socket), argv, environment (`os.environ` replaced wholesale), cwd and umask,
then runs the entry point the console script runs (looked up by name in the installed
`console_scripts`, so whatever `flywall.cli.fast` is at the time) and ends as the console
script ends (`sys.exit(main())` at the top level: atexit, flush, teardown). The server reports
the child's real wait status, so a SIGKILL at `FLYWALL_CRASH_AT` is a real SIGKILL of a real
process (returncode -9), a timeout kills the child, and a test gets the same
`subprocess.CompletedProcess` as from `subprocess.run`.

What differs from an exec, and why it does not matter (tests/test_forkserver.py checks each):
- modules are imported before the environment is known: the one module that reads the
  environment at import (`core/runtime/crash.py`) is re-executed in the child (`RELOADED`;
  a test fails when another module starts reading it at import);
- the interpreter's own environment (PYTHON*, LANG, LC_*) is fixed at the server's start: a
  command line asking for different values gets a real exec instead;
- more modules are in `sys.modules`: tests about what a start-up imports exec for real
  (tests/README.md lists the files that keep real processes, `REAL_EXEC`, and why).

`FLYWALL_TEST_EXEC=1` makes every child a real exec again.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import json
import locale
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

EXEC = os.environ.get("FLYWALL_TEST_EXEC") == "1"
"""Under FLYWALL_TEST_EXEC=1 every child is a real exec, as before the fork server."""

RELOADED = ("flywall.core.runtime.crash",)
"""Modules that read the environment at import: re-executed in each child after its
environment is set (`crash.py` parses FLYWALL_CRASH_AT / FLYWALL_CRASH_LIST at import)."""

REAL_EXEC = {
    "cli/test_fastpath.py": "what a start-up imports and prints before click is loaded",
    "cli/test_signals.py": "signals delivered to a process started for the purpose",
    "cli/test_read_only_user.py": "another uid, through setpriv",
    "core/runtime/test_boot_imports.py": "sys.modules after a real start-up",
    "core/appliance/test_layout.py": "the installed console scripts, by path",
}
"""Test files (under tests/) whose `Appliance.cli` children stay real execs, and why."""

PRODUCT = ("flywall.core", "flywall.journal", "flywall.cli", "flywall.api")
"""Packages whose every module, and every module they import (even in a function), the
server imports before it forks (not `flywall.migrations`: discovery loads those by path)."""

INTERPRETER_ENV = ("PYTHON", "LC_", "LANG")
"""Environment read by the interpreter's own start-up: fixed when the server started."""

_MAX_MESSAGE = 1 << 20
_UNBUFFERED = sys.stdout is not None and sys.stdout.write_through
"""-u or PYTHONUNBUFFERED, as the interpreter's own start-up made sys.stdout."""
_BASE_PATH = sys.path[1:]
"""The interpreter's own sys.path, without the first entry (the script's or -c's folder)."""


# -- the client side (in the pytest worker) ------------------------------------------------------


@functools.cache
def _entry_points() -> dict[str, str]:
    """Console script name -> "module:function", as installed (pyproject's [project.scripts])."""
    found = importlib.metadata.entry_points(group="console_scripts")
    return {ep.name: ep.value for ep in found if ep.value.startswith("flywall.")}


class _Server:
    """The worker's fork server: started on first use, stopped when the worker ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}
        self.log = Path(f"/tmp/flywall-forkserver-{os.getpid()}.log")

    def send(self, request: dict[str, Any], fds: list[int]) -> None:
        """Hand one request (and its stdio fds plus the reply socket) to the server."""
        with self._lock:
            control = self._control if self._alive() else self._start()
            socket.send_fds(control, [json.dumps(request).encode()], fds)

    def interpreter_env(self) -> dict[str, str]:
        with self._lock:
            if not self._alive():
                self._start()
            return self._env

    def stop(self) -> None:
        """End the server and reap it, so its cpu (and its children's) counts as the worker's."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            if self._process.wait() == 0:
                self.log.unlink(missing_ok=True)  # kept only when the server failed
            self._process = None

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, __file__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd="/",
            )
        theirs.close()
        ready = ours.recv(16)
        if ready != b"ready":
            raise RuntimeError(f"the fork server did not start: see {self.log}")
        self._control = ours
        atexit.register(self.stop)
        self._env = {k: v for k, v in os.environ.items() if k.startswith(INTERPRETER_ENV)}
        return ours


_SERVER = _Server()


def start() -> None:
    """Start this worker's server now (its imports take seconds under load), not in the
    middle of a test's first command line, where the pause could change what the test sees
    (e.g. a migration file the test just wrote growing old enough for the discovery cache)."""
    if not EXEC:
        _SERVER.interpreter_env()


def stop() -> None:
    """End this worker's server and reap it (a later `run` starts another)."""
    _SERVER.stop()


class Child:
    """A child forked by the server: enough of `subprocess.Popen` for the suite's uses."""

    def __init__(self, args: Sequence[str], pid: int, reply: socket.socket) -> None:
        self.args = list(args)
        self.pid = pid
        self.returncode: int | None = None
        self._reply = reply
        self.stdin: int | None = None
        self.stdout: int | None = None
        self.stderr: int | None = None
        self._pending: memoryview | None = None
        self._chunks: dict[int, list[bytes]] = {}
        self._ended: set[int] = set()

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal) if the child ended, else None."""
        if self.returncode is None:
            self._reply.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                self._read_status()
            if self.returncode is None:
                self._reply.setblocking(True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child's end; `subprocess.TimeoutExpired` after `timeout` seconds."""
        if self.returncode is None:
            self._reply.settimeout(timeout)
            try:
                self._read_status()
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            finally:
                if self.returncode is None:
                    self._reply.settimeout(None)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        """SIGTERM the child (what a service manager sends), if it still runs."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child (a real signal to the real process), if it still runs."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def communicate(
        self,
        input: bytes | None = None,  # noqa: A002 - Popen's name
        timeout: float | None = None,
    ) -> tuple[bytes, bytes]:
        """Write `input`, read stdout and stderr to their ends, wait; as Popen.communicate
        (after a timeout, a second call goes on with what the first had read)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._pending is None:
            self._pending = memoryview(input or b"")
        with selectors.DefaultSelector() as sel:
            if self.stdin is not None:
                os.set_blocking(self.stdin, False)
                sel.register(self.stdin, selectors.EVENT_WRITE)
            for fd in (self.stdout, self.stderr):
                if fd is not None and fd not in self._ended:
                    sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
                for key, _ in sel.select(left):
                    self._step(sel, int(key.fd))  # type: ignore[call-overload]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        out = b"".join(self._chunks.get(self.stdout, [])) if self.stdout is not None else b""
        err = b"".join(self._chunks.get(self.stderr, [])) if self.stderr is not None else b""
        return out, err

    def _step(self, sel: selectors.BaseSelector, fd: int) -> None:
        """Feed stdin or read a chunk of stdout/stderr; close a pipe at its end."""
        if fd == self.stdin:
            assert self._pending is not None
            self._pending = self._feed(sel, fd, self._pending)
        elif data := os.read(fd, 1 << 16):
            self._chunks.setdefault(fd, []).append(data)
        else:
            sel.unregister(fd)
            os.close(fd)
            self._ended.add(fd)

    def _feed(self, sel: selectors.BaseSelector, fd: int, pending: memoryview) -> memoryview:
        try:
            pending = pending[os.write(fd, pending[:65536]) :]
        except BrokenPipeError:
            pending = pending[:0]
        if not pending:
            sel.unregister(fd)
            os.close(fd)
            self.stdin = None
        return pending

    def _read_status(self) -> None:
        message = self._reply.recv(64)
        if not message:
            raise RuntimeError(f"the fork server died: see {_SERVER.log}")
        self.returncode = os.waitstatus_to_exitcode(int(message.split()[1]))
        self._reply.close()


_exec_here = False


@contextlib.contextmanager
def real_exec(wanted: bool = True) -> Iterator[None]:
    """Within this block, every child is a real exec if `wanted` (a test of the start itself)."""
    global _exec_here  # noqa: PLW0603 - one switch, set around one test at a time
    before, _exec_here = _exec_here, wanted
    try:
        yield
    finally:
        _exec_here = before


def forkable(argv: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """True if this command line can be forked: our console script or `python -c`, and
    the interpreter's own environment as the server has it."""
    if EXEC or _exec_here:
        return False
    if not (_target(argv) or (argv[0] == sys.executable and argv[1:2] == ["-c"])):
        return False
    wanted = {k: v for k, v in (env or os.environ).items() if k.startswith(INTERPRETER_ENV)}
    return wanted == _SERVER.interpreter_env()


def _target(argv: Sequence[str]) -> str | None:
    """The entry point ("module:function") of our console script `argv[0]`, if it is one."""
    program = Path(argv[0])
    if program.parent != Path(sys.executable).parent:
        return None
    return _entry_points().get(program.name)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    warm: Iterable[str] = (),
) -> Child:
    """Fork `argv` (see `forkable`); stdio as Popen's: None inherits, PIPE or DEVNULL.

    `warm`: modules (found on this worker's sys.path) the server imports once, before it
    forks, for a `python -c` child that imports them (e.g. a test module).
    """
    ours: list[int] = []
    theirs: list[int] = []
    for n, wanted in enumerate((stdin, stdout, stderr)):
        if wanted == subprocess.PIPE:
            r, w = os.pipe()
            ours.append(w if n == 0 else r)
            theirs.append(r if n == 0 else w)
        elif wanted == subprocess.DEVNULL:
            ours.append(-1)
            theirs.append(os.open(os.devnull, os.O_RDWR))
        else:
            ours.append(-1)
            theirs.append(os.dup(n if wanted is None else wanted))
    reply, their_reply = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    umask = os.umask(0)
    os.umask(umask)
    request = {
        "argv": list(argv),
        "target": _target(argv),
        "env": dict(os.environ if env is None else env),
        "cwd": str(cwd if cwd is not None else Path.cwd()),
        "umask": umask,
        "warm": list(warm),
        "path": [p for p in sys.path if p],
    }
    try:
        _SERVER.send(request, [their_reply.fileno(), *theirs])
    finally:
        their_reply.close()
        for fd in theirs:
            os.close(fd)
    message = reply.recv(64)
    if not message.startswith(b"pid "):
        raise RuntimeError(f"the fork server could not fork {argv}: see {_SERVER.log}")
    child = Child(argv, int(message.split()[1]), reply)
    child.stdin, child.stdout, child.stderr = (fd if fd >= 0 else None for fd in ours)
    return child


def popen(
    argv: Sequence[str], *, stdout: int | None = None, stderr: int | None = None
) -> Child | subprocess.Popen[bytes]:
    """Start `argv` as `subprocess.Popen(argv, stdout=..., stderr=...)` would: forked when
    `forkable`, else exec'd. Both answer pid, poll, wait and kill."""
    if not forkable(argv):
        return subprocess.Popen(list(argv), stdout=stdout, stderr=stderr)
    return spawn(argv, stdout=stdout, stderr=stderr)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    input: str | None = None,  # noqa: A002 - subprocess.run's name
    warm: Iterable[str] = (),
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(argv, capture_output=True, text=text, check=False, ...)`, forked when
    `forkable`, else exec'd exactly so (`warm`: see `spawn`); `text=False` gives the bytes."""
    if not forkable(argv, env):
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=text,
            env=None if env is None else dict(env),
            cwd=cwd,
            timeout=timeout,
            input=input,
            check=False,
        )
    pipe = subprocess.PIPE
    child = spawn(
        argv, env=env, cwd=cwd, stdin=pipe if input else None, stdout=pipe, stderr=pipe, warm=warm
    )
    data = input.encode(locale.getpreferredencoding(False)) if input else None
    try:
        out, err = child.communicate(data, timeout)
    except subprocess.TimeoutExpired as e:
        child.kill()
        out, err = child.communicate()
        raise subprocess.TimeoutExpired(child.args, e.timeout, _text(out), _text(err)) from None
    assert child.returncode is not None
    if not text:
        return subprocess.CompletedProcess(child.args, child.returncode, out, err)
    return subprocess.CompletedProcess(child.args, child.returncode, _text(out), _text(err))


def _text(data: bytes) -> str:
    """Bytes as `subprocess.run(text=True)` decodes them: locale encoding, universal newlines."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- the server side (its own process) ----------------------------------------------------------


def _imports_of(path: Path) -> set[str]:
    """Every module an import statement of the file names, at any depth (lazy ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def product_modules() -> dict[str, Path]:
    """Every module of the `PRODUCT` packages: name -> source file."""
    found: dict[str, Path] = {}
    for package in PRODUCT:
        spec = importlib.util.find_spec(package)
        assert spec is not None
        assert spec.submodule_search_locations is not None
        for folder in map(Path, spec.submodule_search_locations):
            for source in folder.rglob("*.py"):
                parts = source.relative_to(folder).with_suffix("").parts
                if "examples" in parts or "systemd_units" in parts:
                    continue
                dotted = ".".join(p for p in parts if p != "__init__")
                found[f"{package}.{dotted}".rstrip(".")] = source
    return found


def preload() -> None:
    """Import every module of ours and every module any of them imports, lazily or not."""
    modules = product_modules()
    wanted = set(modules)
    for source in modules.values():
        wanted |= _imports_of(source)
    for name in sorted(wanted):
        with contextlib.suppress(Exception):
            importlib.import_module(name)


class _Forked(BaseException):
    """Raised in a freshly forked child to leave the server's frames before it runs."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__()
        self.request = request


def serve(control: socket.socket) -> None:
    """Fork a child per request; report each child's wait status; end when the worker does."""
    preload()
    import gc

    if threading.active_count() != 1:
        raise RuntimeError(f"a preloaded module started a thread: {threading.enumerate()}")
    gc.collect()
    gc.freeze()  # the children share these pages instead of copying them on collection
    control.send(b"ready")
    waiting: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, reply socket)
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is control:
                message, fds, _flags, _addr = socket.recv_fds(control, _MAX_MESSAGE, 4)
                if not message:
                    for pid, reply in waiting.values():
                        os.waitpid(pid, 0)
                        reply.close()
                    return
                _fork(json.loads(message), fds, sel, control, waiting)
            else:
                pidfd = int(key.fd)  # type: ignore[call-overload]
                pid, reply = waiting.pop(pidfd)
                sel.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    reply.send(f"status {status}".encode())
                reply.close()


def _fork(
    request: dict[str, Any],
    fds: list[int],
    sel: selectors.BaseSelector,
    control: socket.socket,
    waiting: dict[int, tuple[int, socket.socket]],
) -> None:
    reply = socket.socket(fileno=fds[0])
    for name in request["warm"]:
        _warm(name, request["path"])
    pid = os.fork()
    if pid == 0:
        sel.close()
        control.close()
        for pidfd, (_, other) in waiting.items():
            os.close(pidfd)
            other.close()
        reply.close()
        for n, fd in enumerate(fds[1:]):
            os.dup2(fd, n)
            os.close(fd)
        raise _Forked(request)
    for fd in fds[1:]:
        os.close(fd)
    reply.send(f"pid {pid}".encode())
    pidfd = os.pidfd_open(pid)
    waiting[pidfd] = (pid, reply)
    sel.register(pidfd, selectors.EVENT_READ)


def _warm(name: str, path: list[str]) -> None:
    if name not in sys.modules:
        sys.path[:] = [*path, *(p for p in sys.path if p not in path)]
        importlib.import_module(name)


def _become(request: dict[str, Any]) -> Callable[[], object]:
    """In the child: take the request's process state; return what the process then runs."""
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    _reopen_stdio()
    for name in RELOADED:
        importlib.reload(sys.modules[name])
    argv = request["argv"]
    if request["target"] is None:  # python -c CODE ARGS
        sys.argv = ["-c", *argv[3:]]
        sys.path[:] = ["", *_BASE_PATH]
        main = sys.modules["__main__"] = types.ModuleType("__main__")
        code = compile(argv[2], "<string>", "exec")
        return lambda: exec(code, main.__dict__)
    sys.argv = list(argv)
    sys.path[:] = [str(Path(argv[0]).parent), *_BASE_PATH]  # a console script's sys.path
    module, _, function = request["target"].partition(":")
    entry = getattr(importlib.import_module(module), function)
    return lambda: sys.exit(entry())  # as the console script's last line


def _reopen_stdio() -> None:
    """New sys.stdin/stdout/stderr over fds 0-2, made as a fresh interpreter makes them
    (CPython's create_stdio: PYTHONUNBUFFERED, a tty, stderr line-buffered)."""
    unbuffered = _UNBUFFERED
    for n, name in enumerate(("stdin", "stdout", "stderr")):
        old, mode = getattr(sys, name), "r" if n == 0 else "w"
        raw = open(n, mode + "b", buffering=0 if unbuffered and n else -1, closefd=False)  # noqa: SIM115
        stream = io.TextIOWrapper(
            raw,
            encoding=old.encoding,
            errors=old.errors,
            newline="\n",
            line_buffering=not unbuffered and (n == 2 or os.isatty(n)),
            write_through=unbuffered,
        )
        stream.mode = mode  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    # What this interpreter's start made of SIGINT: a handler, or SIG_IGN when it was started
    # with SIGINT ignored (a background job of a shell), as an exec'd child would be too.
    at_start = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's ^C ends us through EOF
    try:
        serve(control)
    except _Forked as forked:
        request = forked.request
    else:
        sys.exit(0)
    signal.signal(signal.SIGINT, at_start)  # a fresh interpreter's
    _run(_become(request))


def _run(job: Callable[[], object]) -> None:
    """Run the child's job; an uncaught exception ends it as the interpreter ends it (the
    traceback without the fork server's frames, exit 1; ^C: death by SIGINT)."""
    try:
        job()
    except SystemExit:
        raise
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        if isinstance(e, KeyboardInterrupt):
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)


if __name__ == "__main__":
    _main()
