"""Getting a box back from a damaged journal: `journal recover-from-backup` (issue 16.16).

A journal that SQLite cannot read, or whose hash chain breaks, stops every command. The
way out is a backup's consistent copy of the journal (see `backup`): the damaged journal
is kept aside (`<journal>.damaged-<UTC time>` with its -wal and -shm, never deleted), the
copy installed, the targets restored from the same backup (so journal and targets agree
at the backup's point), and a `JournalRecovered` event says what happened.

Crash safety: a durable intent file (`<journal>.recovery`) is written first and removed
last. While it exists every other command refuses, naming the command that finishes the
recovery; each step is idempotent, so a rerun after any cut finishes it. The journal is
never absent: the damaged file is first hard-linked to its new name, its -wal and -shm
renamed before that (a stale -wal beside the installed copy would be replayed into it),
then the copy replaces it in one rename.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import msgspec

from flywall.core.appliance.recovery_intent import (
    COMMAND,
    COMMAND_NAME,
    RecoveryIntent,
    intent_path,
)
from flywall.core.model import events as ev
from flywall.core.model.errors import Busy, FlywallError, UsageError, ValidationFailed
from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint

if TYPE_CHECKING:
    from flywall.core.appliance.workspace import Workspace
    from flywall.core.services.backup import Manifest
    from flywall.journal import Journal


class RescueReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `journal recover-from-backup` did."""

    backup_id: str
    damaged: str
    damaged_digest: str
    reason: str
    journal_seq: int
    seq: int
    """The seq of the `JournalRecovered` event."""
    resumed: bool


def diagnose(ws: Workspace) -> str | None:
    """Say why the journal cannot be used (unreadable, malformed, broken chain); None if sound."""
    from flywall.journal import Journal, JournalError

    path = ws.paths.journal
    if not path.exists():
        return f"{path}: no journal file"
    try:
        journal = Journal.open_existing(path, key=ws.device_key())
        if journal is None:
            return f"{path}: the journal holds no event table"
        with journal:
            return _check(ws, journal)
    except JournalError as e:
        return str(e) if str(path) in str(e) else f"{path}: {e}"
    except apsw.Error as e:
        return f"{path}: journal is corrupt: {e}"
    except FlywallError as e:  # the events do not replay (JournalTampered)
        return f"{path}: {e}"


def _check(ws: Workspace, journal: Journal) -> str | None:
    """SQLite's integrity check, the hash chain, then whether it lost events state.db has."""
    rows = journal.connection.execute("PRAGMA integrity_check").fetchall()
    if rows != [("ok",)]:
        return f"{journal.path}: integrity check failed: {rows[0][0]}"
    journal.verify()
    return _behind_state_db(ws, journal)


def _behind_state_db(ws: Workspace, journal: Journal) -> str | None:
    """Say so when state.db records migrations the journal never saw (lost events)."""
    from flywall.core.model import projection
    from flywall.core.model.lifecycle import Lifecycle
    from flywall.core.services import drift
    from flywall.core.targets.database import open_existing

    state = projection.replay(journal.read(), Lifecycle())
    db = open_existing(ws.paths.state_db, ws.settings.version_table)
    try:
        findings = drift.detect(state, db)
    finally:
        if db is not None:
            db.close()
    if drift.LOST_EVENTS not in findings:
        return None
    return f"{journal.path}: {findings[0]} (the journal lost events)"


def recover_from_backup(
    ws: Workspace, backup_id: str, *, force: bool = False, actor: ev.Actor | None = None
) -> RescueReport:
    """Replace a damaged journal by a backup's copy, restore the targets, journal it.

    :raises UsageError: no such backup, no journal copy in it, or a healthy journal
        without `force`, or an interrupted recovery from another backup.
    :raises ValidationFailed: a copy in the backup does not match its manifest.
    :raises Busy: another writer holds the lock, or Flywall runs.
    """
    from flywall.core.runtime.engine import new_run_id
    from flywall.core.runtime.lock import Holder, WriterLock
    from flywall.core.services import backup

    actor = actor or ev.current_actor()
    manifest = backup.read_manifest(ws, backup_id)
    if manifest.journal is None:
        raise UsageError(
            f"backup {backup_id} holds no copy of the journal (taken by an older version): "
            "choose a newer backup (backup list)"
        )
    run_id = new_run_id()
    holder = Holder(
        run_id=run_id,
        command=COMMAND_NAME,
        pid=actor.pid,
        user=actor.user,
        since_ns=time.time_ns(),
    )
    with WriterLock(ws.paths.lock, holder, wait=ws.lock_wait):
        _refuse_running_daemon(ws)
        intent, resumed = _intent(ws, manifest, force=force)
        problems = backup.verify(ws, manifest)
        if problems:
            raise ValidationFailed(f"backup {backup_id}: " + "; ".join(problems))
        _keep_damaged(ws.paths.journal, intent)
        _install(ws, manifest, intent)
        backup.restore_items(ws, manifest)
        seq = _journal_recovery(ws, manifest, intent, run_id, actor)
        path = intent_path(ws.paths.journal)
        fileio.REAL.unlink(path)
        fileio.REAL.fsync_dir(path.parent)
        crashpoint("rescue-finished")
    if ws.settings.notification_channels:  # after the lock, as a run's Courier delivers
        from flywall.core.services import notify

        notify.deliver_and_warn(ws)
    return RescueReport(
        backup_id=backup_id,
        damaged=intent.damaged,
        damaged_digest=intent.damaged_digest,
        reason=intent.reason,
        journal_seq=manifest.journal_head_seq,
        seq=seq,
        resumed=resumed,
    )


def _refuse_running_daemon(ws: Workspace) -> None:
    """Never restore targets under a running Flywall."""
    from flywall.core.appliance import daemon

    run_dir = ws.paths.run_dir
    if ws.sandbox or run_dir is None:
        return
    pid = daemon.live_pid(run_dir)
    if pid is not None:
        raise Busy(f"Flywall is running (pid {pid}): stop it before recovering the journal")


def _intent(ws: Workspace, manifest: Manifest, *, force: bool) -> tuple[RecoveryIntent, bool]:
    """The interrupted recovery's intent, or a new one written durably; (intent, resumed)."""
    journal = ws.paths.journal
    path = intent_path(journal)
    if path.exists():
        intent = msgspec.json.decode(path.read_bytes(), type=RecoveryIntent)
        if intent.backup_id != manifest.backup_id:
            raise UsageError(
                f"{path}: an interrupted recovery from backup {intent.backup_id} must be "
                f"finished first: {COMMAND} {intent.backup_id} --yes"
            )
        return intent, True
    reason = diagnose(ws)
    if reason is None:
        if not force:
            raise UsageError(
                f"{journal}: the journal is sound (chain and integrity check pass): "
                "give --force to replace it by the backup's copy anyway"
            )
        reason = "forced by the operator on a sound journal"
    from flywall.core.services.backup import file_digest

    damaged = ""
    digest = ""
    if journal.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        damaged = str(journal.with_name(f"{journal.name}.damaged-{stamp}"))
        digest = file_digest(journal)
    intent = RecoveryIntent(
        backup_id=manifest.backup_id,
        damaged=damaged,
        damaged_digest=digest,
        reason=reason,
        started_ns=time.time_ns(),
    )
    fileio.replace(path, msgspec.json.encode(intent))
    crashpoint("rescue-intent-written")
    return intent, False


def _keep_damaged(journal: Path, intent: RecoveryIntent) -> None:
    """Keep the damaged journal under its new name: -wal and -shm renamed, then a hard link.

    Once the main file's new name exists, this step is done (its -wal and -shm moved first).
    """
    if not intent.damaged or Path(intent.damaged).exists():
        return
    for suffix in ("-wal", "-shm", "-journal"):
        live = Path(f"{journal}{suffix}")
        if live.exists():
            live.rename(f"{intent.damaged}{suffix}")
    if journal.exists():
        try:
            os.link(journal, intent.damaged)
        except OSError:  # a file system without hard links: a copy, synced
            shutil.copyfile(journal, intent.damaged)
            fd = os.open(intent.damaged, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fileio.REAL.fsync_dir(journal.parent)
    crashpoint("rescue-damaged-kept")


def _install(ws: Workspace, manifest: Manifest, intent: RecoveryIntent) -> None:
    """Put the backup's journal copy in place by one rename (not if it is there already).

    The journal is still the damaged one while its name and the damaged one's are the same
    file (the hard link), or when there was none.
    """
    journal = ws.paths.journal
    if journal.exists() and not (intent.damaged and journal.samefile(intent.damaged)):
        return
    assert manifest.journal is not None
    copy = ws.paths.backups / manifest.backup_id / manifest.journal.name
    fileio.replace(journal, copy.read_bytes())
    crashpoint("rescue-journal-installed")


def _journal_recovery(
    ws: Workspace, manifest: Manifest, intent: RecoveryIntent, run_id: str, actor: ev.Actor
) -> int:
    """Append `JournalRecovered` unless an earlier, cut-short attempt already did.

    It is appended as a run of its own (RunStarted, JournalRecovered, RunFinished in one
    transaction), so history shows who recovered the box and the notices go out as for
    any writing command. Returns the seq of `JournalRecovered`.
    """
    from flywall.core.runtime.recorder import append_run

    event = ev.JournalRecovered(
        backup_id=manifest.backup_id,
        damaged_path=intent.damaged,
        damaged_digest=intent.damaged_digest,
        reason=intent.reason,
        journal_seq=manifest.journal_head_seq,
        actor=actor,
    )
    with ws.write_journal(recovering=True) as journal:
        done = _already_journaled(journal, event)
        if done is not None:
            return done
        rows = append_run(journal, run_id, COMMAND_NAME, actor, [event])
    crashpoint("rescue-journaled")
    return rows[1].seq


def _already_journaled(journal: Journal, event: ev.JournalRecovered) -> int | None:
    """The seq of this recovery's event if its run is the journal's last one."""
    seq, _ = journal.head()
    if seq - 1 <= event.journal_seq:
        return None
    recovered, finished = journal.read(after=seq - 2)
    if (recovered.kind, finished.kind) != (ev.kind_of(event), "RunFinished"):
        return None
    found = ev.decode(recovered.body)
    assert isinstance(found, ev.JournalRecovered)
    same = (found.backup_id, found.damaged_path) == (event.backup_id, event.damaged_path)
    return recovered.seq if same else None
