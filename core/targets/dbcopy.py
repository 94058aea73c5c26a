"""Copies of state.db for a backup: consistent, durable, and digested as they are written.

The `database` and `state` targets' `backup` (`statedb.py`); the backup service also uses
`file_digest` and `digest_range` for its manifest and its journal copy.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import TYPE_CHECKING, Any

import apsw
import blake3

from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


class Worker(threading.Thread):
    """A call in a thread of its own; `result()` waits and returns or raises what it did."""

    def __init__(self, fn: Callable[..., Any], *args: object) -> None:
        super().__init__(daemon=True)
        self._call = (fn, args)
        self._outcome: tuple[bool, Any] = (False, None)
        self.start()

    def run(self) -> None:
        """Call, keeping what it returned or raised for `result`."""
        fn, args = self._call
        try:
            self._outcome = (True, fn(*args))
        except BaseException as e:  # handed to the waiting thread, raised there
            self._outcome = (False, e)

    def result(self) -> Any:
        """Wait for the call; return what it returned or raise what it raised."""
        self.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def file_digest(path: Path) -> str:
    """Return the blake3 of a file, streamed through one bounded buffer.

    Neither read whole nor memory-mapped: a mapping of a 1 GB state.db counts in full
    against the process's resident memory. One thread: at these buffer sizes blake3's own
    threads measured slower than one core here (0.19 s against 0.16 s for 1 GiB).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_range(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def digest_range(fd: int, size: int, patch: tuple[int, bytes] | None = None) -> str:
    """The blake3 of bytes [0, size) of fd, with `patch` = (offset, bytes) laid over them."""
    hasher = blake3.blake3()
    buffer = bytearray(min(size, fileio.CHUNK))
    offset = 0
    while offset < size:
        n = os.preadv(fd, [memoryview(buffer)[: min(len(buffer), size - offset)]], offset)
        if n == 0:
            raise OSError(errno.EIO, f"file ended at byte {offset} of {size}")
        if patch is not None and offset <= patch[0] < offset + n:
            at = patch[0] - offset
            buffer[at : at + len(patch[1])] = patch[1]
        hasher.update(memoryview(buffer)[:n])
        offset += n
    return hasher.hexdigest()


def connect(path: str, vfs: str | None, flags: int | None = None) -> apsw.Connection:
    """Open through the workspace's VFS (the power-cut simulation sits there in tests)."""
    kwargs: dict[str, object] = {"vfs": vfs} if vfs else {}
    if flags is not None:
        kwargs["flags"] = flags
    return apsw.Connection(path, **kwargs)  # type: ignore[arg-type]


WAL_HEADER = (18, b"\x02\x02")
"""Bytes 18-19 of an SQLite header in WAL mode (file format versions); rollback mode is 1, 1."""


def copy_database(
    source: Path,
    target: Path,
    vfs: str | None,
    io: fileio.IO,
    once: Callable[[], None],
    *,
    held: bool = False,
) -> tuple[int, str]:
    """Copy state.db byte for byte while no one can change it; return (size, digest).

    The write lock (`BEGIN IMMEDIATE`) stops every writer, and in WAL mode a checkpoint
    (with the lock held) first moves every committed frame into the main file: from then
    on no connection can change that file, readers go on reading, and the file is the
    whole database. The copy moves in the kernel; a WAL header is rewritten to rollback
    mode, so the copy is a plain self-contained database file, as `PRAGMA journal_mode =
    DELETE` after the online backup API left it. The digest is taken of the locked source
    with that same header, in a thread of its own while another writes and fsyncs the copy
    (and this one runs `once`), in one bounded buffer: it is what the copy must hold, and
    `verify` compares the copy with it before a restore (so a faulty copy is caught too,
    not enshrined).

    A reader that keeps an old snapshot can stop the checkpoint from reaching the end of
    the WAL, and a writer can hold the lock past the busy timeout: then the online backup
    API copies instead (page by page, restarting when a writer commits), as it always did.

    `held`: the run's own open transaction already holds the write lock (its first step
    runs beside this copy, `core/runtime/overlap.py`), so this connection takes a read
    snapshot instead; the step's pages stay in the -wal, uncommitted, until the copy is done.
    """
    lock = connect(str(source), vfs, apsw.SQLITE_OPEN_READWRITE)
    try:
        lock.set_busy_timeout(BUSY_MS)
        if _freeze(lock, str(source), vfs, held=held):
            size = lock.execute("PRAGMA page_size").fetchone()
            count = lock.execute("PRAGMA page_count").fetchone()
            assert size is not None  # these PRAGMAs always return one row
            assert count is not None
            (page_size,), (pages,) = size, count
            copied = _copy_frozen(source, page_size * pages, target, io, once)
            if copied is not None:
                return copied
        return _online_copy(source, target, lock, once)
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()


def _copy_frozen(
    source: Path, size: int, target: Path, io: fileio.IO, once: Callable[[], None]
) -> tuple[int, str] | None:
    """Copy and digest the first `size` bytes (the whole database) in two threads; run `once`.

    None if the main file is shorter than the database (never seen: the freeze put every
    page there; then the online backup API copies instead).
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size < size:
            return None
        patch: tuple[int, bytes] | None = (WAL_HEADER[0], b"\x01\x01")
        if os.pread(fd, 2, WAL_HEADER[0]) != WAL_HEADER[1]:
            patch = None
        copying = Worker(io.copy_new, fd, size, target, 0o600, patch)
        hashing = Worker(digest_range, fd, size, patch)
        try:
            once()
        finally:
            copying.join()
            hashing.join()
        copying.result()
        return size, hashing.result()
    finally:
        os.close(fd)


BUSY_MS = 5000
"""How long the backup waits for another writer before copying with the online backup API."""


def _freeze(lock: apsw.Connection, source: str, vfs: str | None, *, held: bool) -> bool:
    """Take the write lock; in WAL mode checkpoint everything. False: state.db stays busy.

    `held`: the write lock is the run's already, a read snapshot is all this one takes.
    """
    try:
        lock.execute("BEGIN" if held else "BEGIN IMMEDIATE")
        lock.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # the read snapshot
    except apsw.BusyError:
        return False
    if lock.execute("PRAGMA journal_mode").fetchall()[0][0] != "wal":
        # rollback mode: with RESERVED held, no one writes the main file; but a writer whose
        # lock is held elsewhere may spill its pages into it: then copy page by page
        return not held
    # The lock's own connection cannot checkpoint inside its transaction: a second one can
    # (PASSIVE needs no writer lock), and nothing can append to the WAL meanwhile.
    other = connect(source, vfs, apsw.SQLITE_OPEN_READWRITE)
    try:
        other.execute("PRAGMA schema_version").fetchall()  # opens the WAL (else: -1, -1)
        frames, copied = other.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
    except apsw.BusyError:
        return False
    finally:
        other.close()
    crashpoint("backup-state-checkpointed")
    return 0 <= frames == copied


def _online_copy(
    source: Path, target: Path, lock: apsw.Connection, once: Callable[[], None]
) -> tuple[int, str]:
    """Copy a database others keep busy with SQLite's online backup API; fsync; digest.

    `once` runs first, the lock released. The copy is a plain file of the backup folder
    (fsynced, then the folder renamed and fsynced), so it never goes through the
    workspace's VFS.
    """
    if lock.in_transaction:
        lock.execute("ROLLBACK")
    once()
    src = connect(str(source), None, apsw.SQLITE_OPEN_READONLY)
    try:
        return copy_into_file(src, target, pages_per_step=4096)
    finally:
        src.close()


def copy_into_file(src: apsw.Connection, target: Path, pages_per_step: int = -1) -> tuple[int, str]:
    """Copy `src` into a new self-contained file `target`; make it private, fsync, digest.

    SQLite's online backup API, page by page (`pages_per_step=-1`: all pages inside one
    read transaction, a committed state whatever the source's WAL holds). The copy is
    switched to rollback-journal mode, so it is one file with no -wal to lose. Both the
    state.db copy and the journal copy of a backup are made here.
    """
    dest = connect(str(target), None)
    try:
        with dest.backup("main", src, "main") as job:
            while not job.done:
                job.step(pages_per_step)
        dest.execute("PRAGMA journal_mode = DELETE")
    finally:
        dest.close()
    os.chmod(target, 0o600)  # noqa: PTH101 - before anyone can read it
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size, digest_range(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
