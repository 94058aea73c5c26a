"""The single-writer lock: `flock` on a file beside the journal (DESIGN §7).

The kernel drops an flock when its process dies, so a power cut or SIGKILL never leaves
a stale lock. The holder writes who it is into the file, so a second writer can say
"busy: run R (migrate) by pid P since T" instead of just failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import TYPE_CHECKING, Self

import msgspec

from flywall.core.model.errors import Busy, ValidationFailed
from flywall.core.model.times import iso_seconds

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType


class Holder(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds the writer lock."""

    run_id: str
    command: str
    pid: int
    user: str
    since_ns: int

    def describe(self) -> str:
        """One line for the busy message and for status."""
        since = iso_seconds(self.since_ns)
        return f"run {self.run_id} ({self.command}) by pid {self.pid} ({self.user}) since {since}"


class WriterLock:
    """Hold the lock for the life of a `with` block; raise `Busy` if someone else has it."""

    # A reader's momentary shared probe must not look like a writer: with no live writer
    # named in the file, retry this long. A live writer named there is busy at once (an API
    # request refused at once frees its worker for the next request).
    _RETRY_FOR = 0.5

    def __init__(self, path: Path, holder: Holder, *, wait: float = 0.0) -> None:
        """`wait`: seconds to wait for a busy lock (`--wait`), live holder or not."""
        self.path = path
        self.holder = holder
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:  # as pre-flight reports a folder it cannot write
            raise ValidationFailed(f"{self.path}: cannot take the writer lock: {e.strerror}") from e
        start = time.monotonic()
        deadline = start + self._RETRY_FOR
        waited = start + self.wait  # --wait: a live holder is waited for too
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                other = _read_holder(fd)
                now = time.monotonic()
                probe = (other is None or not _alive(other.pid)) and now < deadline
                if probe or now < waited:
                    time.sleep(0.02)  # a reader's probe, a writer about to say who it is
                    continue
                os.close(fd)
                who = other.describe() if other else "another process"
                after = f" (waited {self.wait:g} s)" if self.wait else ""
                raise Busy(f"busy: {who} holds {self.path}{after}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, msgspec.json.encode(self.holder), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def current_holder(path: Path) -> Holder | None:
    """Return the live holder of the lock at `path`, or None if nobody holds it.

    Never blocks and never writes: a shared, non-blocking probe that is released at once.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except PermissionError as e:  # a read-only user may not open the 0600 lock (issue 16.11)
        held = _flock_holder_pid(path)
        if held is None:
            raise ValidationFailed(f"{path}: cannot probe the writer lock: {e.strerror}") from e
        return (
            None if held == 0 else Holder(run_id="?", command="?", pid=held, user="?", since_ns=0)
        )
    except OSError as e:  # no answer, no guess
        raise ValidationFailed(f"{path}: cannot probe the writer lock: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or Holder(run_id="?", command="?", pid=0, user="?", since_ns=0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _flock_holder_pid(path: Path) -> int | None:
    """Ask the kernel (/proc/locks) who holds an flock on `path`, without opening it.

    Returns the holder's pid, 0 when nobody holds it, None when the kernel cannot say.
    """
    try:
        st = path.stat()
        with open("/proc/locks", encoding="ascii") as locks:  # noqa: PTH123
            lines = locks.read().splitlines()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a blocked waiter has "->")
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:  # noqa: PLR2004
            return int(fields[4])
    return 0


def _alive(pid: int) -> bool:
    """Tell whether process `pid` exists (a holder record left by a killed writer names none)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return pid > 0


def _read_holder(fd: int) -> Holder | None:
    with contextlib.suppress(OSError, msgspec.DecodeError):
        raw = os.pread(fd, 4096, 0)
        if raw:
            return msgspec.json.decode(raw, type=Holder)
    return None
