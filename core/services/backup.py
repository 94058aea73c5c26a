"""Backups of the targets: state.db, flywall.hcl and api.json (the seed's Backup Manager).

A backup is a folder `backup_location/<id>/` (mode 0700) holding the three files (0600)
and a manifest (msgspec JSON: items, sizes, blake3 digests, the journal seq it belongs
to, what was applied then). It is written as `.<id>.partial`, every file fsynced, then
renamed into place and the folder fsynced: a folder without the dot is always complete.
state.db is copied byte for byte under its write lock (readers go on), in the kernel; only
a database kept busy past the timeout falls back to SQLite's online backup API.

The journal is copied too (`journal.db`, never a raw copy of its WAL files: SQLite's online
backup API in one step, so one read transaction), and the manifest records the head the
copy holds (seq and hash, read from the copy itself). The copy is taken before the
`BackupCreated` that names the backup: a run defers that event to share its next write, so
it cannot be in the copy, and need not be. A journal restored from the copy is explained by
the recorded head, and `journal recover-from-backup` journals the recovery on top of it.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

import apsw
import blake3
import msgspec

from flywall.core.model.errors import FlywallError, UsageError, ValidationFailed
from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from flywall.core.appliance.workspace import Workspace

MANIFEST = "manifest.json"


class BackupFailed(FlywallError):
    """A backup could not be written (disk full, unreadable source): nothing was changed."""

    exit_code = 1


class BackupItem(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a backup."""

    name: str
    component: str
    source: str
    size: int
    digest: str
    absent: bool = False
    """The target did not exist: restoring means returning to "no such file"."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a backup holds and where in the journal's history it was taken."""

    backup_id: str
    created_ns: int
    journal_seq: int
    reason: str
    applied: list[str]
    items: list[BackupItem]
    journal: BackupItem | None = None
    """The journal's consistent copy; None in backups older than issue 16.16."""
    journal_head_seq: int = 0
    journal_head_hash: str = ""
    """The copy's last event: seq and hash (hex), read from the copy itself."""

    @property
    def size(self) -> int:
        """Total bytes of the backed-up files."""
        return sum(item.size for item in self.items)


def _sources(ws: Workspace) -> list[tuple[str, str, Path]]:
    """(file name in the backup, component, live path) of everything a backup covers."""
    paths = ws.paths
    return [
        ("state.db", "database", paths.state_db),
        ("flywall.hcl", "config", paths.config),
        ("api.json", "api", paths.api_document),
    ]


def create(
    ws: Workspace,
    backup_id: str,
    *,
    journal_seq: int,
    applied: list[str],
    reason: str,
    io: fileio.IO = fileio.REAL,
    alongside: Callable[[], None] | None = None,
) -> Manifest:
    """Write a complete backup or nothing at all.

    `alongside` (the run's validate_before) runs exactly once: while state.db's copy is
    written when it is copied byte for byte under the lock (it then checks the very bytes
    backed up, and its CPU overlaps the copy's I/O), else before the copy. Its exception
    wins over the backup's, as it would have come first.

    :raises BackupFailed: naming the backup folder and the cause (e.g. no space left).
    """
    root = ws.paths.backups
    final, partial = root / backup_id, root / f".{backup_id}.partial"
    once = _Once(alongside)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700)
        items = [_copy(ws, source, partial, io, once) for source in _sources(ws)]
        once()  # no state.db to copy
        journal, head = _copy_journal(ws, partial)
        manifest = Manifest(
            backup_id=backup_id,
            created_ns=time.time_ns(),
            journal_seq=journal_seq,
            reason=reason,
            applied=applied,
            items=items,
            journal=journal,
            journal_head_seq=head[0],
            journal_head_hash=head[1],
        )
        io.write_new(partial / MANIFEST, msgspec.json.encode(manifest), 0o600)
        io.fsync_dir(partial)
        crashpoint("backup-written")
        io.rename(partial, final)
        io.fsync_dir(root)
        crashpoint("backup-completed")
        _ui_backup(ws, final, manifest, io)
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if e is once.error:
            raise
        once()  # not run yet: a failing check is what the run would have said first
        if not isinstance(e, (OSError, apsw.Error)):
            raise
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BackupFailed(f"backup to {final} failed: {cause}; nothing was changed") from e
    return manifest


def _ui_backup(ws: Workspace, final: Path, manifest: Manifest, io: fileio.IO) -> None:
    """Also give Flywall's UI the config as backed up (`uibackup`), from the backup's copy."""
    from flywall.core.appliance import uibackup

    folder = ws.paths.ui_backups
    config = next((i for i in manifest.items if i.component == "config"), None)
    if ws.sandbox or folder is None or config is None or config.absent:
        return
    data = (final / config.name).read_bytes()
    reason = manifest.reason  # names the run; `backup create` is a run of its own
    if manifest.backup_id not in reason:
        reason = f"{reason} (run {manifest.backup_id})"
    uibackup.write(
        folder,
        data,
        description=f"flywall-migration: {reason}",
        shown_folder=_on_box(ws, folder),
        io=io,
    )


def _on_box(ws: Workspace, path: Path) -> str:
    """`path` as the box itself names it: without the `--root` prefix."""
    root = ws.settings.root
    return "/" + str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


class _Once:
    """Run a callable at most once, wherever that happens first; remember its exception."""

    def __init__(self, fn: Callable[[], None] | None) -> None:
        self._fn = fn
        self.error: BaseException | None = None

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            try:
                fn()
            except BaseException as e:
                self.error = e
                raise


class _Worker(threading.Thread):
    """A call in a thread of its own; `result()` waits and returns or raises what it did."""

    def __init__(self, fn: Callable[..., Any], *args: object) -> None:
        super().__init__(daemon=True)
        self._call = (fn, args)
        self._outcome: tuple[bool, Any] = (False, None)
        self.start()

    def run(self) -> None:
        fn, args = self._call
        try:
            self._outcome = (True, fn(*args))
        except BaseException as e:  # handed to the waiting thread, raised there
            self._outcome = (False, e)

    def result(self) -> Any:
        self.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def _copy(
    ws: Workspace, source: tuple[str, str, Path], folder: Path, io: fileio.IO, once: _Once
) -> BackupItem:
    """Copy one target into the backup folder (an absent target is recorded as absent)."""
    name, component, path = source
    if not path.exists():
        return BackupItem(
            name=name, component=component, source=str(path), size=0, digest="", absent=True
        )
    copy = folder / name
    if component == "database":
        size, digest = _copy_database(path, copy, ws.sqlite.vfs, io, once)
        crashpoint("backup-state-copied")
    else:
        data = fileio.read(path) or b""
        io.write_new(copy, data, 0o600)
        size, digest = len(data), blake3.blake3(data).hexdigest()
    return BackupItem(name=name, component=component, source=str(path), size=size, digest=digest)


JOURNAL_COPY = "journal.db"


def _copy_journal(ws: Workspace, folder: Path) -> tuple[BackupItem | None, tuple[int, str]]:
    """Copy the journal with SQLite's online backup API; return its item and copied head.

    One `step(-1)` copies every page inside one read transaction, so the copy is a
    committed state of the journal whatever its WAL holds; a raw copy of journal.db
    without its -wal would miss committed events. The head is read from the copy: it is
    exactly what a recovery from this backup gets back.
    """
    source = ws.paths.journal
    if not source.exists():
        return None, (0, "")
    copy = folder / JOURNAL_COPY
    src = _connect(str(source), ws.sqlite.vfs, apsw.SQLITE_OPEN_READONLY)
    dest = _connect(str(copy), None)
    try:
        with dest.backup("main", src, "main") as job:
            job.step(-1)
        dest.execute("PRAGMA journal_mode = DELETE")
        row = dest.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        dest.close()
        src.close()
    os.chmod(copy, 0o600)  # noqa: PTH101 - before anyone can read it
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.fsync(fd)
        size = os.fstat(fd).st_size
        digest = _digest(fd, size)
    finally:
        os.close(fd)
    crashpoint("backup-journal-copied")
    item = BackupItem(
        name=JOURNAL_COPY, component="journal", source=str(source), size=size, digest=digest
    )
    return item, (0, "") if row is None else (int(row[0]), bytes(row[1]).hex())


def file_digest(path: Path) -> str:
    """Return the blake3 of a file, streamed through one bounded buffer.

    Neither read whole nor memory-mapped: a mapping of a 1 GB state.db counts in full
    against the process's resident memory. One thread: at these buffer sizes blake3's own
    threads measured slower than one core here (0.19 s against 0.16 s for 1 GiB).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return _digest(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _digest(fd: int, size: int, patch: tuple[int, bytes] | None = None) -> str:
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


def _connect(path: str, vfs: str | None, flags: int | None = None) -> apsw.Connection:
    """Open through the workspace's VFS (the power-cut simulation sits there in tests)."""
    kwargs: dict[str, object] = {"vfs": vfs} if vfs else {}
    if flags is not None:
        kwargs["flags"] = flags
    return apsw.Connection(path, **kwargs)  # type: ignore[arg-type]


WAL_HEADER = (18, b"\x02\x02")
"""Bytes 18-19 of an SQLite header in WAL mode (file format versions); rollback mode is 1, 1."""


def _copy_database(
    source: Path, target: Path, vfs: str | None, io: fileio.IO, once: _Once
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
    """
    lock = _connect(str(source), vfs, apsw.SQLITE_OPEN_READWRITE)
    try:
        lock.set_busy_timeout(BUSY_MS)
        if _freeze(lock, str(source), vfs):
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
    source: Path, size: int, target: Path, io: fileio.IO, once: _Once
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
        copying = _Worker(io.copy_new, fd, size, target, 0o600, patch)
        hashing = _Worker(_digest, fd, size, patch)
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


def _freeze(lock: apsw.Connection, source: str, vfs: str | None) -> bool:
    """Take the write lock; in WAL mode checkpoint everything. False: state.db stays busy."""
    try:
        lock.execute("BEGIN IMMEDIATE")
        lock.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # the read snapshot
    except apsw.BusyError:
        return False
    if lock.execute("PRAGMA journal_mode").fetchall()[0][0] != "wal":
        return True  # rollback mode: with RESERVED held, no one writes the main file
    # The lock's own connection cannot checkpoint inside its transaction: a second one can
    # (PASSIVE needs no writer lock), and nothing can append to the WAL meanwhile.
    other = _connect(source, vfs, apsw.SQLITE_OPEN_READWRITE)
    try:
        other.execute("PRAGMA schema_version").fetchall()  # opens the WAL (else: -1, -1)
        frames, copied = other.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
    except apsw.BusyError:
        return False
    finally:
        other.close()
    crashpoint("backup-state-checkpointed")
    return 0 <= frames == copied


def _online_copy(source: Path, target: Path, lock: apsw.Connection, once: _Once) -> tuple[int, str]:
    """Copy a database others keep busy with SQLite's online backup API; fsync; digest.

    `once` runs first, the lock released. The copy is a plain file of the backup folder
    (fsynced, then the folder renamed and fsynced), so it never goes through the
    workspace's VFS.
    """
    if lock.in_transaction:
        lock.execute("ROLLBACK")
    once()
    src = _connect(str(source), None, apsw.SQLITE_OPEN_READONLY)
    dest = _connect(str(target), None)
    try:
        with dest.backup("main", src, "main") as job:
            while not job.done:
                job.step(4096)
        dest.execute("PRAGMA journal_mode = DELETE")
    finally:
        dest.close()
        src.close()
    os.chmod(target, 0o600)  # noqa: PTH101 - before anyone can read it
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size, _digest(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def read_manifest(ws: Workspace, backup_id: str) -> Manifest:
    """Load a backup's manifest.

    :raises UsageError: there is no complete backup with that id.
    """
    if not backup_id or backup_id.startswith(".") or "/" in backup_id:
        # a name, not a path: "../x" must not reach a manifest outside backup_location
        raise UsageError(f"no backup {backup_id!r} in {ws.paths.backups}")
    path = ws.paths.backups / backup_id / MANIFEST
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except FileNotFoundError:
        raise UsageError(f"no backup {backup_id!r} in {ws.paths.backups}") from None
    except msgspec.DecodeError as e:
        raise ValidationFailed(f"{path}: unreadable manifest: {e}") from e


def list_backups(ws: Workspace) -> list[Manifest]:
    """Every complete backup, oldest first (partial and pruning folders are skipped)."""
    root = ws.paths.backups
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not (folder / MANIFEST).exists():
            continue
        found.append(read_manifest(ws, folder.name))
    return sorted(found, key=lambda m: m.created_ns)


def verify(ws: Workspace, manifest: Manifest) -> list[str]:
    """Check every file of a backup against its manifest digest; return the problems."""
    folder = ws.paths.backups / manifest.backup_id
    problems = []
    copies = manifest.items + ([manifest.journal] if manifest.journal else [])
    for item in copies:
        if item.absent:
            continue
        copy = folder / item.name
        if not copy.exists():
            problems.append(f"{copy}: missing")
        elif file_digest(copy) != item.digest:
            problems.append(f"{folder / item.name}: digest differs from the manifest")
    return problems


def restore_items(ws: Workspace, manifest: Manifest) -> None:
    """Put the backup's files back in place; idempotent, so recovery can simply redo it.

    state.db is restored with the online backup API into the live database (one write
    transaction: a cut leaves it whole, old or new); the files by the atomic replace.
    """
    folder = ws.paths.backups / manifest.backup_id
    live = {name: path for name, _, path in _sources(ws)}
    for item in manifest.items:
        if item.absent and item.component != "database":
            if live[item.name].exists():
                fileio.REAL.unlink(live[item.name])
                fileio.REAL.fsync_dir(live[item.name].parent)
            crashpoint("restore-file-done")
        elif item.component == "database":
            if item.absent and not live[item.name].exists():
                continue
            dest = _connect(str(live[item.name]), ws.sqlite.vfs)
            # An absent state.db is restored as an empty one: deleting a live database
            # (and its -wal or -journal) is not atomic; emptying it in one transaction is.
            source = ":memory:" if item.absent else str(folder / item.name)
            src = _connect(source, ws.sqlite.vfs, apsw.SQLITE_OPEN_READONLY)
            try:
                mode = dest.execute("PRAGMA journal_mode").fetchall()[0][0]
                dest.execute(f"PRAGMA synchronous = {'FULL' if mode == 'wal' else 'EXTRA'}")
                with dest.backup("main", src, "main") as job:
                    job.step(-1)
            finally:
                src.close()
                dest.close()
            crashpoint("restore-state-done")
        else:
            fileio.replace(live[item.name], (folder / item.name).read_bytes())
            crashpoint("restore-file-done")


def remove(ws: Workspace, backup_id: str) -> None:
    """Delete a backup: renamed out of sight first, so a cut never leaves half of one."""
    root = ws.paths.backups
    folder, doomed = root / backup_id, root / f".{backup_id}.pruning"
    if folder.exists():
        folder.rename(doomed)
        fileio.REAL.fsync_dir(root)
    shutil.rmtree(doomed, ignore_errors=True)
    crashpoint("backup-removed")


def remove_partials(ws: Workspace) -> None:
    """Remove what a cut left behind: half-written and half-removed backup folders."""
    root = ws.paths.backups
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name.startswith(".") and folder.name.endswith((".partial", ".pruning")):
                shutil.rmtree(folder, ignore_errors=True)
