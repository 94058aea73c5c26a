"""Backups of the targets: state.db, flywall.hcl and api.json (the seed's Backup Manager).

A backup is a folder `backup_location/<id>/` (mode 0700) holding the three files (0600)
and a manifest (msgspec JSON: items, sizes, blake3 digests, the journal seq it belongs
to, what was applied then). It is written as `.<id>.partial`, every file fsynced, then
renamed into place and the folder fsynced: a folder without the dot is always complete.
state.db is copied with SQLite's online backup API, consistent while readers run.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING

import apsw
import blake3
import msgspec

from flywall.core import fileio
from flywall.core.crash import crashpoint
from flywall.core.errors import FlywallError, UsageError, ValidationFailed

if TYPE_CHECKING:
    from pathlib import Path

    from flywall.core.workspace import Workspace

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
) -> Manifest:
    """Write a complete backup or nothing at all.

    :raises BackupFailed: naming the backup folder and the cause (e.g. no space left).
    """
    root = ws.paths.backups
    final, partial = root / backup_id, root / f".{backup_id}.partial"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700)
        items = [_copy(name, kind, path, partial, io) for name, kind, path in _sources(ws)]
        manifest = Manifest(
            backup_id=backup_id,
            created_ns=time.time_ns(),
            journal_seq=journal_seq,
            reason=reason,
            applied=applied,
            items=items,
        )
        io.write_new(partial / MANIFEST, msgspec.json.encode(manifest), 0o600)
        io.fsync_dir(partial)
        crashpoint("backup-written")
        io.rename(partial, final)
        io.fsync_dir(root)
        crashpoint("backup-completed")
    except (OSError, apsw.Error) as e:
        shutil.rmtree(partial, ignore_errors=True)
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BackupFailed(f"backup to {final} failed: {cause}; nothing was changed") from e
    return manifest


def _copy(name: str, component: str, path: Path, folder: Path, io: fileio.IO) -> BackupItem:
    """Copy one target into the backup folder (an absent target is recorded as absent)."""
    if not path.exists():
        return BackupItem(
            name=name, component=component, source=str(path), size=0, digest="", absent=True
        )
    copy = folder / name
    if component == "database":
        _sqlite_copy(path, copy)
        crashpoint("backup-state-copied")
    else:
        io.write_new(copy, fileio.read(path) or b"", 0o600)
    return BackupItem(
        name=name,
        component=component,
        source=str(path),
        size=copy.stat().st_size,
        digest=file_digest(copy),
    )


def file_digest(path: Path) -> str:
    """Return the blake3 of a file, memory-mapped and multithreaded.

    A 1 GB state.db is never read into memory at once.
    """
    if path.stat().st_size == 0:
        return blake3.blake3().hexdigest()
    return blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).hexdigest()


def _connect(path: str, vfs: str | None, flags: int | None = None) -> apsw.Connection:
    """Open through the workspace's VFS (the power-cut simulation sits there in tests)."""
    kwargs: dict[str, object] = {"vfs": vfs} if vfs else {}
    if flags is not None:
        kwargs["flags"] = flags
    return apsw.Connection(path, **kwargs)  # type: ignore[arg-type]


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy a live SQLite database with the online backup API, then fsync the copy.

    The copy is a plain file of the backup folder (fsynced, then the folder renamed and
    fsynced), so it never goes through the workspace's VFS; the restore writes a target
    and does.
    """
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
    finally:
        os.close(fd)


def read_manifest(ws: Workspace, backup_id: str) -> Manifest:
    """Load a backup's manifest.

    :raises UsageError: there is no complete backup with that id.
    """
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
    for item in manifest.items:
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
