"""Replay: every status, state and version is derived from the journal here (DESIGN §2, §6).

`Projection` is the replayed state: a pure fold of journal rows through the lifecycle. It is
a msgspec Struct so `flywall.core.runtime.snapshot` can cache it beside the journal;
dropping that cache loses nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from flywall.core.model import events as ev
from flywall.core.model.errors import IllegalTransition, JournalTampered
from flywall.core.model.lifecycle import State, trigger_for
from flywall.core.model.times import iso

if TYPE_CHECKING:
    from collections.abc import Iterable

    from flywall.core.model.lifecycle import Lifecycle


# The hash before the journal's first event (the journal's GENESIS; a test keeps them equal).
START_HASH = bytes(32)


class EventRow(Protocol):
    """One stored journal event, as the fold reads it (the journal's `StoredEvent` is one).

    A protocol, not the journal's type: the model is pure and imports no storage.
    """

    @property
    def seq(self) -> int:
        """Its place in the chain."""
        ...

    @property
    def at_ns(self) -> int:
        """When it was appended (ns since the epoch)."""
        ...

    @property
    def run_id(self) -> str:
        """The run that wrote it."""
        ...

    @property
    def migration(self) -> str:
        """The migration it is about, or empty."""
        ...

    @property
    def kind(self) -> str:
        """The event's type name."""
        ...

    @property
    def body(self) -> bytes:
        """The msgpack-encoded event."""
        ...

    @property
    def hash(self) -> bytes:
        """The chain hash up to and including it."""
        ...


class MigrationRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the journal says about one migration.

    Encoded only into the snapshot, without its default fields (a fifth of its size at
    1000 migrations: every writer rewrites the snapshot, and every read decodes it);
    a decode fills them in again, so older and newer snapshots read alike.
    """

    version: str
    state: State = State.PENDING
    component: str = ""
    slug: str = ""
    file: str = ""
    description: str = ""
    checksum: str = ""
    schema_version: str | None = None
    attempts: int = 0
    direction: str | None = None
    last_run: str = ""
    started_seq: int = 0
    applied_at_ns: int | None = None
    applied_seq: int = 0
    last_error: str | None = None
    fingerprint: str | None = None
    intent: ev.WriteIntent | None = None
    restoring: str | None = None
    written: ev.WriteIntent | None = None
    """The file write of the applied `up`: a down can return to its exact `before` bytes."""
    unchanged: bool = False
    """The applied `up` ran and left its file as it was: its down has nothing to undo."""
    last_batch: ev.BatchCommitted | None = None
    repaired_from: str | None = None
    """The checksum it was applied with, when `repair` bound it to an edited file since."""


_FILE_COMPONENTS = ("config", "api")
"""Components whose version the target file itself carries (its `schema_version`)."""


class RunRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A run that has started but not finished (or the last one that did)."""

    run_id: str
    command: str
    started_ns: int
    pid: int
    user: str
    outcome: str | None = None
    finished_ns: int | None = None
    applied: list[str] = []
    failed: bool = False
    backup_id: str | None = None
    confirm_by_ns: int | None = None
    expired_seq: int = 0


class Projection(msgspec.Struct, kw_only=True):
    """The replayed state of the whole journal up to `seq`."""

    seq: int = 0
    head_hash: bytes = START_HASH
    migrations: dict[str, MigrationRecord] = {}
    open_runs: dict[str, RunRecord] = {}
    last_run: RunRecord | None = None
    unconfirmed: dict[str, RunRecord] = {}
    expired: dict[str, RunRecord] = {}
    """Runs whose window closed: recovery undoes what they applied, across any cut."""
    fingerprints: dict[str, str] = {}

    def record(self, version: str) -> MigrationRecord:
        """Return the record of `version`, pending if the journal never mentioned it."""
        return self.migrations.get(version) or MigrationRecord(version=version)

    def state_of(self, version: str) -> State:
        """Return the state of `version`; pending if unknown to the journal."""
        rec = self.migrations.get(version)
        return State.PENDING if rec is None else rec.state

    def in_state(self, *states: State) -> list[MigrationRecord]:
        """Return the records in any of `states`, ordered by version."""
        return sorted(
            (r for r in self.migrations.values() if r.state in states), key=lambda r: r.version
        )

    def components(self) -> dict[str, str]:
        """Return each component's version.

        That is the schema_version (else the version) of its newest applied migration, as
        state.db's `schema_versions` table has it, except that a file's version is what the
        file says: a version-neutral config or api migration (a shape fix, with no
        schema_version) leaves it at the newest schema_version declared before it.
        """
        versions: dict[str, str] = {}
        declared: set[str] = set()
        for rec in self.in_state(State.APPLIED):
            if rec.schema_version is not None:
                versions[rec.component] = rec.schema_version
                declared.add(rec.component)
            elif rec.component not in _FILE_COMPONENTS or rec.component not in declared:
                versions[rec.component] = rec.version
        return dict(sorted(versions.items()))

    def counts(self) -> dict[str, int]:
        """How many migrations the journal knows in each state."""
        counts = dict.fromkeys((s.value for s in State), 0)
        for rec in self.migrations.values():
            counts[rec.state.value] += 1
        return counts

    def apply(self, row: EventRow, lifecycle: Lifecycle, written: ev.Event | None = None) -> None:
        """Fold one stored event into the projection.

        `written` is the event the live engine just encoded into `row.body` (the recorder
        passes it rather than decoding its own bytes again); replay decodes and checks.

        :raises JournalTampered: the body does not decode, or the lifecycle refuses it.
        """
        if written is not None:
            event = written
        else:
            try:
                event = ev.decode(row.body)
            except msgspec.DecodeError as e:
                raise JournalTampered(row.seq, f"cannot decode {row.kind} event: {e}") from e
            if ev.kind_of(event) != row.kind:
                raise JournalTampered(row.seq, f"kind {row.kind} but body is {ev.kind_of(event)}")
        trigger = trigger_for(event)
        if trigger is not None:
            self._step_migration(row, event, trigger, lifecycle)
        else:
            self._note_run(row, event)
        self.seq, self.head_hash = row.seq, row.hash

    def _step_migration(
        self, row: EventRow, event: ev.Event, trigger: str, lifecycle: Lifecycle
    ) -> None:
        if not row.migration:
            raise JournalTampered(row.seq, f"{row.kind} names no migration")
        rec = self.migrations.get(row.migration) or MigrationRecord(version=row.migration)
        try:
            rec.state = lifecycle.step(row.migration, rec.state, trigger)
        except IllegalTransition as e:
            raise JournalTampered(row.seq, f"{row.kind} is not allowed here: {e}") from e
        self.migrations[row.migration] = rec
        _fold(rec, row, event)
        run = self.open_runs.get(row.run_id)
        if run is not None:
            if isinstance(event, ev.MigrationApplied):
                run.applied.append(row.migration)
            elif isinstance(event, ev.MigrationFailed) and event.direction == "up":
                run.failed = True
        fingerprint = _fingerprint_of(event)
        if fingerprint is not None and rec.component == "database":
            self.fingerprints["database"] = fingerprint
            rec.fingerprint = fingerprint

    def _note_run(self, row: EventRow, event: ev.Event) -> None:
        match event:
            case ev.RunStarted(command=command, actor=actor):
                self.open_runs[row.run_id] = RunRecord(
                    run_id=row.run_id,
                    command=command,
                    started_ns=row.at_ns,
                    pid=actor.pid,
                    user=actor.user,
                )
            case ev.BackupCreated(backup_id=backup_id) if row.run_id in self.open_runs:
                run = self.open_runs[row.run_id]
                run.backup_id = run.backup_id or backup_id
            case ev.BackupRestored(fingerprint_after=fingerprint) if fingerprint:
                self.fingerprints["database"] = fingerprint
            case ev.RunFinished(outcome=outcome, confirm_by_ns=confirm_by):
                finished = self.open_runs.pop(row.run_id, None)
                if finished is not None:
                    finished.outcome, finished.finished_ns = outcome, row.at_ns
                    self.last_run = finished
                    if confirm_by is not None and outcome == "completed":
                        finished.confirm_by_ns = confirm_by
                        self.unconfirmed[row.run_id] = finished
            case ev.RunConfirmed():
                self.unconfirmed.pop(row.run_id, None)
            case ev.ConfirmationExpired():
                expired = self.unconfirmed.pop(row.run_id, None)
                if expired is not None:
                    expired.expired_seq = row.seq
                    self.expired[row.run_id] = expired


def _fold(rec: MigrationRecord, row: EventRow, event: ev.Event) -> None:  # noqa: C901, PLR0912 - one case per event kind
    """Copy the facts an event carries into the migration's record."""
    match event:
        case ev.MigrationStarted():
            rec.component, rec.checksum = event.component, event.checksum
            rec.slug, rec.description, rec.file = event.slug, event.description, event.file
            rec.direction, rec.last_run, rec.started_seq = event.direction, row.run_id, row.seq
            rec.intent, rec.restoring = None, event.backup_id
            if event.direction == "up":
                rec.attempts += 1
                rec.schema_version = event.schema_version
                rec.last_batch, rec.written = None, None
        case ev.MigrationApplied():
            rec.applied_at_ns, rec.applied_seq, rec.last_error = row.at_ns, row.seq, None
            rec.unchanged = rec.direction == "up" and rec.written is None
        case ev.MigrationFailed(error_type=error_type, message=message):
            rec.last_error = f"{error_type}: {message}"
        case ev.MigrationRolledBack():
            rec.applied_at_ns, rec.last_error, rec.written = None, None, None
            rec.unchanged = False
        case ev.WriteIntent():
            rec.intent = event
            if event.direction == "up":
                rec.written = event
        case ev.BatchCommitted():
            rec.last_batch = event
        case ev.MigrationRepaired(checksum_before=before, checksum_after=after):
            rec.repaired_from, rec.checksum = rec.repaired_from or before, after
        case ev.Recovered(direction="down", decision="applied"):
            pass  # the interrupted down did not happen: still applied as before
        case ev.StateForced(checksum=checksum) if checksum and not rec.checksum:
            rec.component, rec.checksum, rec.file = event.component, checksum, event.file
            rec.slug, rec.description = event.slug, event.description
            rec.schema_version, rec.unchanged = event.schema_version, False
            _decided(rec, row, event.to_state)
        case ev.Recovered(decision=decision) | ev.StateForced(to_state=decision):
            rec.unchanged = False  # applied by hand or by recovery: down decides for itself
            _decided(rec, row, decision)
    if rec.state is not State.RUNNING and rec.state is not State.ROLLING_BACK:
        rec.intent = None


def _decided(rec: MigrationRecord, row: EventRow, decision: str) -> None:
    """The facts a decided state carries (recovery's or an operator's)."""
    if decision == State.APPLIED:
        rec.applied_at_ns, rec.applied_seq = rec.applied_at_ns or row.at_ns, row.seq
    elif decision in (State.ROLLED_BACK, State.PENDING):
        rec.applied_at_ns, rec.written = None, None


def _fingerprint_of(event: ev.Event) -> str | None:
    match event:
        case (
            ev.MigrationApplied(fingerprint_after=fp) | ev.MigrationRolledBack(fingerprint_after=fp)
        ):
            return fp
        case ev.Recovered(evidence=evidence):
            return evidence.get("fingerprint")
    return None


def replay(
    rows: Iterable[EventRow], lifecycle: Lifecycle, start: Projection | None = None
) -> Projection:
    """Fold `rows` into `start` (or an empty projection) through the lifecycle."""
    projection = start if start is not None else Projection()
    for row in rows:
        projection.apply(row, lifecycle)
    return projection


def run_summary(run: RunRecord | None) -> dict[str, Any] | None:
    """The last finished run as status shows it (also `replay`)."""
    if run is None:
        return None
    return {
        "run_id": run.run_id,
        "command": run.command,
        "outcome": run.outcome,
        "finished_at": iso(run.finished_ns),
    }
