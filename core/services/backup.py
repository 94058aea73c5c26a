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

import shutil
import time
from typing import TYPE_CHECKING

import apsw
import msgspec

from flywall.core.model.errors import FlywallError, UsageError, ValidationFailed
from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint
from flywall.core.targets import registry
from flywall.core.targets.dbcopy import connect, copy_into_file, file_digest

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from flywall.core.appliance.workspace import Workspace
    from flywall.core.targets.protocol import Target

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
    held: bool = False,
) -> Manifest:
    """Write a complete backup or nothing at all.

    `alongside` (the run's validate_before) runs exactly once: while state.db's copy is
    written when it is copied byte for byte under the lock (it then checks the very bytes
    backed up, and its CPU overlaps the copy's I/O), else before the copy. Its exception
    wins over the backup's, as it would have come first. `held`: the caller's own open
    transaction holds state.db's write lock (`core/runtime/overlap.py`).

    :raises BackupFailed: naming the backup folder and the cause (e.g. no space left).
    """
    root = ws.paths.backups
    final, partial = root / backup_id, root / f".{backup_id}.partial"
    once = _Once(alongside)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700)
        items = [_copy(ws, source, partial, io, once, held) for source in _sources(ws)]
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


def _copy(
    ws: Workspace,
    source: tuple[str, str, Path],
    folder: Path,
    io: fileio.IO,
    once: _Once,
    held: bool,
) -> BackupItem:
    """Copy one target into the backup folder (an absent target is recorded as absent)."""
    name, component, path = source
    if not path.exists():
        return BackupItem(
            name=name, component=component, source=str(path), size=0, digest="", absent=True
        )
    copied = _target(ws, component, path).backup(folder / name, io, once, held=held)
    return BackupItem(
        name=name, component=component, source=str(path), size=copied.size, digest=copied.digest
    )


def _target(ws: Workspace, component: str, path: Path) -> Target:
    """The target whose file `path` is: it knows how to copy and restore it."""
    return registry.target_for(component, {component: path}, state_db=path, vfs=ws.sqlite.vfs)


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
    src = connect(str(source), ws.sqlite.vfs, apsw.SQLITE_OPEN_READONLY)
    try:
        size, digest = copy_into_file(src, copy)
    finally:
        src.close()
    check = connect(str(copy), None, apsw.SQLITE_OPEN_READONLY)
    try:
        row = check.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        check.close()
    crashpoint("backup-journal-copied")
    item = BackupItem(
        name=JOURNAL_COPY, component="journal", source=str(source), size=size, digest=digest
    )
    return item, (0, "") if row is None else (int(row[0]), bytes(row[1]).hex())


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
        copy = None if item.absent else folder / item.name
        _target(ws, item.component, live[item.name]).restore(copy)


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
