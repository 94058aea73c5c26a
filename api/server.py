"""Running the API on a socket: uvicorn, hardened against clients that hold connections.

uvicorn alone waits forever for the headers of a first request and accepts connections
until the process runs out of file descriptors; then every accept fails, asyncio logs
each failure with a traceback, and `/healthz` goes unanswered. So this module adds:

- a header timeout: a connection that has not sent complete request headers within
  `header_timeout` seconds of connecting (or of starting its next request) is closed;
- a connection cap (at most half the process's file descriptors): beyond it, the oldest
  connection that is waiting for a request is closed to make room, and a new one is
  refused only when every connection is busy;
- throttled logging: accept errors, evictions and timeouts are one line each, at most
  one per kind every `LOG_EVERY` seconds, with a count of those left out; uvicorn's own
  per-connection warnings (garbage instead of HTTP) likewise;
- an access log that never writes the value of a query parameter named like a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote_plus

from uvicorn.protocols.http.h11_impl import H11Protocol

from flywall.core.commands import UsageError

if TYPE_CHECKING:
    from litestar import Litestar

    from flywall.api.security import Address

log = logging.getLogger("uvicorn.error")  # beside uvicorn's own lines, in its format

HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's headers (nginx's client_header_timeout is 60)."""
MAX_CONNECTIONS = 256
LOG_EVERY = 10.0
"""Seconds between two log lines of the same kind (accept error, eviction, timeout)."""


class Throttled:
    """Log one line per kind at most every `every` seconds; say how many were left out."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY) -> None:
        self._logger = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        """Log `message` unless a line of this `kind` was logged less than `every` ago."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._every:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        left_out = self._left_out.pop(kind, 0)
        more = f" ({left_out} more like it since the last line)" if left_out else ""
        self._last[kind] = now
        self._logger.warning("%s%s", message, more)


class ThrottleLines(logging.Filter):
    """Let through one of uvicorn's per-connection warnings per kind every `LOG_EVERY` s.

    A client that sends garbage on connection after connection would otherwise write
    "Invalid HTTP request received." once per connection.
    """

    KINDS = ("Invalid HTTP request received.", "Unsupported upgrade request.")

    def __init__(self, every: float = LOG_EVERY) -> None:
        super().__init__()
        self._every = every
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop a repeat of a listed warning logged less than `every` ago."""
        message = record.getMessage()
        if message not in self.KINDS:
            return True
        now = time.monotonic()
        if now - self._last.get(message, -self._every) < self._every:
            return False
        self._last[message] = now
        return True


def loop_error_handler(notes: Throttled) -> Any:
    """An asyncio exception handler: accept failures become throttled one-line warnings.

    Out of file descriptors, asyncio retries `accept` every second and, by default, logs
    each failure with its traceback: a flood that hides everything else in the log.
    """

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = str(context.get("message", ""))
        if isinstance(error, OSError) and "accept" in message:
            notes.warn("accept", f"cannot accept connections: {error.strerror or error}")
            return
        if isinstance(error, ValueError) and "_start_serving" in repr(context.get("handle")):
            # asyncio's retry of a failed accept, fired after shutdown closed the socket
            return
        loop.default_exception_handler(context)

    return handle


def connection_cap(limit: int) -> int:
    """Return `limit`, lowered to half the file descriptors this process may open.

    The other half is for what requests open (the journal, state.db, their WAL files).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(1, min(limit, soft // 2))


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header timeout and a connection cap.

    Subclassed per server by `guarded()`, which sets the class attributes.
    """

    header_timeout: ClassVar[float] = HEADER_TIMEOUT
    max_connections: ClassVar[int] = MAX_CONNECTIONS
    notes: ClassVar[Throttled] = Throttled(log)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header clock; make room if the cap is reached."""
        super().connection_made(transport)
        self._opened = self.loop.time()
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        """Stop the header clock once a request's headers are in; start it for the next."""
        super().data_received(data)
        if self.waiting():
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the header clock with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def waiting(self) -> bool:
        """Tell whether no request is being answered: the connection only holds a slot."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        timer, self._header_timer = getattr(self, "_header_timer", None), None
        if timer is not None:
            timer.cancel()

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.waiting() and not self.transport.is_closing():
            self.notes.warn(
                "timeout",
                f"closed a connection from {_peer(self)}: no request headers within "
                f"{self.header_timeout:g} s",
            )
            self.transport.close()

    def _make_room(self) -> None:
        """Close the oldest connection waiting for a request, else refuse this one."""
        idle = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedH11)
            and c.waiting()
            and not c.transport.is_closing()
        ]
        victim = min(idle, key=lambda c: c._opened) if idle else self  # noqa: SLF001
        what = "the oldest idle connection" if idle else "a new one (every connection is busy)"
        self.notes.warn(
            "cap",
            f"{self.max_connections} connections open: closed {what}, from {_peer(victim)}",
        )
        victim.transport.close()


def _peer(protocol: H11Protocol) -> str:
    client = protocol.client
    return f"{client[0]}:{client[1]}" if client else "a unix socket"


def guarded(header_timeout: float, max_connections: int) -> type[GuardedH11]:
    """Return the protocol class for one server, with its own limits and log throttle."""
    return type(
        "GuardedH11",
        (GuardedH11,),
        {
            "header_timeout": header_timeout,
            "max_connections": max_connections,
            "notes": Throttled(log),
        },
    )


class RedactTokens(logging.Filter):
    """Rewrite uvicorn's access-log line so no query parameter named `*token*` shows its value.

    An SSE client that cannot set headers may put its token in the URL; the log (read by
    more people than the tokens file) must not keep it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the request target (the third argument of uvicorn's access line)."""
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):  # noqa: PLR2004
            target = redact_query(args[2])
            if len(target) > MAX_LOGGED:  # a client must not write the log by the kilobyte
                target = target[:MAX_LOGGED] + "..."
            record.args = (*args[:2], target, *args[3:])
        return True


MAX_LOGGED = 256
"""Characters of a request target the access log keeps."""


_PAIR = re.compile(r"([^&;=]*)(=?)([^&;]*)")


def redact_query(target: str) -> str:
    """Return `target` with the value of every query parameter named like a token hidden."""
    path, sep, query = target.partition("?")
    if not sep:
        return target

    def hide(match: re.Match[str]) -> str:
        name, equals, value = match.groups()
        if value and "token" in unquote_plus(name).lower():
            value = "REDACTED"
        return f"{name}{equals}{value}"

    return f"{path}?{_PAIR.sub(hide, query)}"


# -- sockets --------------------------------------------------------------------------------


def bind(address: Address) -> socket.socket:
    """Bind and listen on `address`; a refusal is one line naming it.

    :raises UsageError: the port is taken, the socket path is in use or not a socket, ...
    """
    try:
        if address.path is not None:
            return _bind_unix(address.path)
        return _bind_tcp(address.host or "", address.port or 0)
    except OSError as e:
        raise UsageError(f"--listen {address.url()}: {e.strerror or e}") from None


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path: Path) -> socket.socket:
    """Bind a unix socket at `path` (mode 0600), replacing a stale socket left by a crash."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UsageError(f"--listen unix:{path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # nobody listens: left by a server that was killed
        else:
            raise UsageError(f"--listen unix:{path}: another server listens there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never a moment when others may connect
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(2048)
    return sock


def serve(
    app: Litestar,
    sock: socket.socket,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> None:
    """Run `app` with uvicorn on `sock` until SIGINT/SIGTERM; a run in progress finishes first."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="info",
        timeout_graceful_shutdown=3,  # event streams never end on their own
        server_header=False,
        loop="asyncio",
        http=guarded(header_timeout, connection_cap(max_connections)),
    )
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    logging.getLogger("uvicorn.error").addFilter(ThrottleLines())
    notes = Throttled(log)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            asyncio.get_running_loop().set_exception_handler(loop_error_handler(notes))
            await super().startup(sockets)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # Here, not after run(): uvicorn re-raises SIGTERM once it has served.
            await super().shutdown(sockets)
            _forget(sock, path)

    path = Path(sock.getsockname()) if sock.family == socket.AF_UNIX else None
    try:
        _Server(config).run(sockets=[sock])
    finally:
        _forget(sock, path)


def _forget(sock: socket.socket, path: Path | None) -> None:
    """Close `sock`; remove its unix socket `path`, so none is left behind."""
    sock.close()
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
