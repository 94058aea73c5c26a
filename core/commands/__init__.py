"""The commands API: what every interface (CLI, HTTP) calls (STYLE §3).

Each function takes a `Workspace` and plain arguments and returns msgspec Structs (or lists
of them) whose JSON form is the documented output. Read-only commands never write: they
open the journal only if it exists, and show interrupted migrations with the decision
recovery would take.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

# What the faces (cli/, api/) use besides the functions below: they import nothing else of
# the core (tests/test_layers.py). Journal errors reach them as FlywallErrors (workspace).
from flywall.core.appliance.workspace import Workspace as Workspace  # noqa: TC001 - the faces load it
from flywall.core.model import errors as errors
from flywall.core.model import events as ev
from flywall.core.model import projection
from flywall.core.model.errors import EXIT_MIGRATION_FAILED as EXIT_MIGRATION_FAILED
from flywall.core.model.errors import EXIT_VALIDATION as EXIT_VALIDATION
from flywall.core.model.errors import FlywallError as FlywallError
from flywall.core.model.errors import RunInterrupted as RunInterrupted
from flywall.core.model.errors import SettingsError as SettingsError
from flywall.core.model.errors import UsageError as UsageError
from flywall.core.model.lifecycle import State
from flywall.core.model.times import iso
from flywall.core.model.times import iso_seconds as iso_seconds
from flywall.core.runtime import snapshot
from flywall.core.runtime.lock import current_holder
from flywall.core.runtime.pytimeout import ending_runs as ending_runs
from flywall.core.runtime.recovery import Decision  # noqa: TC001 - at runtime: msgspec and OpenAPI read annotations
from flywall.core.scripts.discovery import Broken  # noqa: TC001 - at runtime: msgspec and OpenAPI read annotations
from flywall.core.targets.registry import marked as marked

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import TextIO

    from flywall.core.rehearsal.dryrun import DryRunReport
    from flywall.core.rehearsal.trial import TrialReport
    from flywall.core.runtime.engine import Engine, RunReport
    from flywall.core.scripts import signing
    from flywall.core.scripts.discovery import Migration
    from flywall.core.services import audit
    from flywall.core.services import notify as notify_
    from flywall.core.services.backup import Manifest
    from flywall.core.services.rescue import RescueReport
    from flywall.core.services.validate import ValidationReport, Verdict
    from flywall.journal import Journal, StoredEvent


# -- read-only ------------------------------------------------------------------------


class MigrationRow(msgspec.Struct, kw_only=True):
    """One line of `list`: a migration file, or one the journal knows whose file is gone."""

    version: str
    component: str
    description: str
    state: str
    checksum: str
    applied_at: str | None
    file: str | None = None
    last_error: str | None = None
    checksum_ok: bool = True


class JournalInfo(msgspec.Struct, kw_only=True):
    """Where the journal is and how far it goes."""

    path: str
    events: int
    head_hash: str


class PathsInfo(msgspec.Struct, kw_only=True):
    """Where status found everything: the layout detected and the files it names."""

    layout: str
    config: str
    settings: str
    state: str
    journal: str
    migrations: str
    backups: str
    run_dir: str


def paths_info(ws: Workspace) -> PathsInfo:
    """The `paths` of `status --json`: Flywall's files and ours, in the layout found."""
    p = ws.paths
    return PathsInfo(
        layout=ws.settings.layout,
        config=str(p.config),
        settings=str(p.settings),
        state=str(p.state_db),
        journal=str(p.journal),
        migrations=str(p.migrations_dir),
        backups=str(p.backups),
        run_dir=str(p.run_dir),
    )


class StatusReport(msgspec.Struct, kw_only=True):
    """The output of `status`."""

    components: dict[str, str]
    counts: dict[str, int]
    journal: JournalInfo
    interrupted: list[Decision] = []
    drift: list[str] = []
    awaiting_confirmation: dict[str, str | None] = {}
    lock_holder: str | None = None
    last_run: dict[str, Any] | None = None
    current_version: str | None = None
    migrations: list[MigrationRow] | None = None
    paths: PathsInfo | None = None
    missing: list[str] = []
    """Applied migrations whose file is gone (a warning: rollback uses the journal's copy)."""
    expired_confirmation: dict[str, list[str]] = {}
    """Runs whose window closed unconfirmed, with what the next writing command rolls back."""
    broken: list[Broken] = []
    """Files in the migrations folders that are not valid migrations (exit 4; writers refuse)."""


def _read_state(ws: Workspace) -> tuple[projection.Projection, Journal | None]:
    journal = ws.read_journal()
    return snapshot.load(journal), journal


def list_migrations(
    ws: Workspace, *, pending: bool = False, applied: bool = False
) -> list[MigrationRow]:
    """List every migration with its state (files on disk, plus journal-only ones).

    A file that is not a valid migration is a row in state "broken" (its reason in
    `last_error`), whatever the filter: one bad file must not hide the others, nor itself.
    """
    ws.tolerate_broken = True
    state, journal = _read_state(ws)
    if journal is not None:
        journal.close()
    rows = _rows(ws, state, pending=pending, applied=applied)
    return rows + [_broken_row(b) for b in ws.broken]


def _broken_row(broken: Broken) -> MigrationRow:
    return MigrationRow(
        version=broken.version,
        component="",
        description="",
        state="broken",
        checksum="",
        applied_at=None,
        file=broken.path,
        last_error=broken.reason,
    )


def _rows(
    ws: Workspace, state: projection.Projection, *, pending: bool, applied: bool
) -> list[MigrationRow]:
    rows: dict[str, MigrationRow] = {}
    for m in ws.migrations:
        rec = state.record(m.version)
        rows[m.version] = MigrationRow(
            version=m.version,
            component=m.component,
            description=m.description,
            state=rec.state.value,
            checksum=m.checksum,
            applied_at=iso(rec.applied_at_ns),
            file=m.path,
            last_error=rec.last_error,
            checksum_ok=rec.state is not State.APPLIED or rec.checksum == m.checksum,
        )
    for version, rec in state.migrations.items():
        if version not in rows:
            rows[version] = MigrationRow(
                version=version,
                component=rec.component,
                description=rec.description,
                state=rec.state.value,
                checksum=rec.checksum,
                applied_at=iso(rec.applied_at_ns),
                last_error=rec.last_error,
            )
    selected = sorted(rows.values(), key=lambda r: r.version)
    if pending:
        selected = [r for r in selected if r.state in ("pending", "failed", "rolled_back")]
    if applied:
        selected = [r for r in selected if r.state == "applied"]
    return selected


def _counts(ws: Workspace, state: projection.Projection) -> dict[str, int]:
    """How many migrations are in each state: the rows of `list`, counted without building them."""
    counts = dict.fromkeys((s.value for s in State), 0)
    on_disk = set()
    for m in ws.migrations:
        on_disk.add(m.version)
        counts[state.record(m.version).state.value] += 1
    for version, rec in state.migrations.items():
        if version not in on_disk:
            counts[rec.state.value] += 1
    return counts


def status(ws: Workspace, *, verbose: bool = False) -> StatusReport:
    """Summarise the appliance: component versions, counts, journal head, interruptions."""
    # drift's, the one rule shared with validate: status needs no validate service
    from flywall.core.services.drift import missing_files

    ws.tolerate_broken = True  # shown as `broken`, beside everything else
    state, journal = _read_state(ws)
    try:
        rows = _rows(ws, state, pending=False, applied=False) if verbose else None
        counts = _counts(ws, state)
        holder = current_holder(ws.paths.lock)
        interrupted, drift = ([], []) if holder else _evidence(ws, state)
        last = state.last_run
        return StatusReport(
            components=state.components(),
            counts=counts,
            journal=JournalInfo(
                path=str(ws.paths.journal), events=state.seq, head_hash=state.head_hash.hex()
            ),
            interrupted=interrupted,
            drift=drift,
            awaiting_confirmation={
                run_id: iso(run.confirm_by_ns) for run_id, run in state.unconfirmed.items()
            },
            expired_confirmation=_expired(state),
            lock_holder=holder.describe() if holder else None,
            last_run=projection.run_summary(last),
            current_version=ws.settings.current_version,
            migrations=rows,
            paths=paths_info(ws),
            missing=missing_files(ws, state),
            broken=ws.broken,
        )
    finally:
        if journal is not None:
            journal.close()


def _expired(state: projection.Projection) -> dict[str, list[str]]:
    """Unconfirmed runs past their deadline: the next writing command rolls them back.

    Nothing changes on disk when a window closes (no process watches the clock), so status
    says it: such a run is no longer confirmable, and its migrations will be undone.
    """
    now = time.time_ns()
    return {
        run_id: list(run.applied)
        for run_id, run in state.unconfirmed.items()
        if run.confirm_by_ns is not None and run.confirm_by_ns <= now
    }


def _evidence(ws: Workspace, state: projection.Projection) -> tuple[list[Decision], list[str]]:
    """Read state.db (never creating it): pending recovery decisions and drift findings.

    Skipped while a writer holds the lock: mid-run, the target is legitimately ahead.
    """
    from flywall.core.runtime import recovery
    from flywall.core.services import drift
    from flywall.core.targets.database import open_existing

    db = open_existing(ws.paths.state_db, ws.settings.version_table)
    try:
        decisions = recovery.pending(
            state, db, ws.file_targets(), resume_up=ws.settings.state.resume_on_crash
        )
        return decisions, drift.detect(state, db)
    finally:
        if db is not None:
            db.close()


def event_dict(row: StoredEvent, event: ev.Event | None = None) -> dict[str, Any]:
    """Render one journal event: its row's columns, then the event's own fields."""
    event = event if event is not None else ev.decode(row.body)
    fields = msgspec.to_builtins(event)
    fields.pop("type", None)
    return {
        "seq": row.seq,
        "at": iso(row.at_ns),
        "kind": row.kind,
        "migration": row.migration or None,
        "run_id": row.run_id or None,
        **fields,
        "hash": row.hash.hex(),
    }


def history(
    ws: Workspace,
    *,
    migration: str | None = None,
    kinds: tuple[str, ...] = (),
    actor: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[dict[str, Any]]:
    """Every journal event, oldest first; filtered by migration, kind, actor, seq or time.

    `since` and `until` are each a seq or an ISO-8601 time (inclusive); see `EventFilter`.

    :raises UsageError: `migration` names no file and no journaled migration (as `log`:
        a typo must not look like a migration without history).
    """
    from flywall.core.services.audit import EventFilter

    keep = EventFilter(kinds=kinds, actor=actor, since=since, until=until)
    journal = ws.read_journal()
    rows: list[StoredEvent] = []
    if journal is not None:
        with journal:
            keep.prepare(journal)
            rows = list(journal.read(migration=migration))
    if migration is not None and not rows and ws.migration(migration) is None:
        raise errors.UsageError(f"unknown migration {migration}")
    items = ((row, event_dict(row)) for row in rows)
    return [fields for row, fields in items if keep(row, fields)]


def log(ws: Workspace, version: str) -> list[dict[str, Any]]:
    """Return the lines migration `version` logged, with the run and time of each.

    :raises UsageError: no file and no journal event has that version (as `debug`).
    """
    rows = []
    journal = ws.read_journal()
    if journal is not None:
        with journal:
            rows = list(journal.read(migration=version))
    if not rows and ws.migration(version) is None:
        raise errors.UsageError(f"unknown migration {version}")
    return [
        {"at": iso(row.at_ns), "run_id": row.run_id, "level": e.level, "message": e.message}
        for row in rows
        if isinstance(e := ev.decode(row.body), ev.MigrationLog)
    ]


class ChecksumRow(msgspec.Struct, kw_only=True):
    """A migration's checksum on disk next to the one the journal recorded."""

    version: str
    file: str | None
    on_disk: str | None
    recorded: str | None
    state: str
    match: bool
    repaired_from: str | None = None
    """The checksum it was applied with, when `repair` bound it to the edited file."""


def checksums(ws: Workspace) -> list[ChecksumRow]:
    """Compare every migration file's checksum with the one it was applied with."""
    state, journal = _read_state(ws)
    if journal is not None:
        journal.close()
    on_disk = {m.version: m for m in ws.migrations}
    rows = []
    for version in sorted(set(on_disk) | set(state.migrations)):
        m, rec = on_disk.get(version), state.migrations.get(version)
        recorded = rec.checksum if rec else None
        # As migrate and validate: only an applied file is bound to its checksum (a failed
        # one is fixed and run again).
        bound = rec is not None and rec.state is State.APPLIED
        rows.append(
            ChecksumRow(
                version=version,
                file=m.path if m else None,
                on_disk=m.checksum if m else None,
                recorded=recorded,
                state=(rec.state if rec else State.PENDING).value,
                match=m is None or not bound or m.checksum == recorded,
                repaired_from=rec.repaired_from if rec else None,
            )
        )
    return rows


class VerifyReport(msgspec.Struct, kw_only=True):
    """The result of `journal verify`."""

    path: str
    events: int
    head_hash: str
    ok: bool
    keyed_from: int | None = None
    """The seq from which the hashes are device-key MACs (1, or where a key was adopted)."""


def journal_verify(ws: Workspace) -> VerifyReport:
    """Walk the hash chain and replay every event through the lifecycle.

    :raises JournalTampered: naming the first bad seq.
    """
    from flywall.core.model.lifecycle import Lifecycle

    journal = ws.read_journal()
    if journal is None:
        return VerifyReport(path=str(ws.paths.journal), events=0, head_hash="", ok=True)
    with journal:
        end = journal.verify()
        projection.replay(journal.read(), Lifecycle())
    return VerifyReport(
        path=str(ws.paths.journal),
        events=end.seq,
        head_hash=end.hash.hex(),
        ok=True,
        keyed_from=end.keyed_from,
    )


class AdoptReport(msgspec.Struct, kw_only=True):
    """The result of `journal adopt-key`."""

    path: str
    key_id: str
    keyed_from: int
    adopted: bool
    """False when the journal was keyed already (from `keyed_from`): nothing was written."""


def adopt_device_key(ws: Workspace, *, actor: ev.Actor | None = None) -> AdoptReport:
    """Key a journal begun without the device key, from a `DeviceKeyAdopted` event on.

    The plain chain is checked whole first, so a MAC never vouches for a broken history;
    from then on every event is a MAC, and the first one covers all before it.

    :raises UsageError: no device key is configured, or there is no journal yet.
    :raises JournalTampered: the plain chain is broken (nothing is written).
    :raises Busy: another writer holds the lock.
    """
    from flywall.core.runtime.crash import crashpoint
    from flywall.core.runtime.lock import Holder, WriterLock
    from flywall.core.runtime.recorder import adopt_key
    from flywall.journal import ADOPTED, key_id

    key = ws.device_key()
    if key is None:
        raise errors.UsageError(f"{ws.paths.settings}: migration.device_key_file is not set")
    if not ws.paths.journal.exists():
        raise errors.UsageError(
            f"{ws.paths.journal}: no journal yet; its first event will be keyed anyway"
        )
    ws.require_appliance()
    actor, ident, path = actor or ev.current_actor(), key_id(key), str(ws.paths.journal)
    holder = Holder(
        run_id="-", command="journal adopt-key", pid=actor.pid, user=actor.user,
        since_ns=time.time_ns(),
    )  # fmt: skip
    with WriterLock(ws.paths.lock, holder, wait=ws.lock_wait), ws.write_journal() as journal:
        event = ev.DeviceKeyAdopted(actor=actor, key_id=ident)
        try:  # one walk, inside adopt_key's transaction
            row = adopt_key(journal, event)
        except errors.ChainKeyedAlready as e:
            return AdoptReport(path=path, key_id=ident, keyed_from=e.keyed_from, adopted=False)
        crashpoint(f"after-{ADOPTED}")
    return AdoptReport(path=path, key_id=ident, keyed_from=row.seq, adopted=True)


# -- writing ------------------------------------------------------------------------


def refuse_if_disabled(ws: Workspace) -> None:
    """Refuse a command that would apply, roll back or rebind migrations (`enabled = false`).

    Checked before the writer lock is taken, so the API answers at once. Read-only
    commands, `backup create`, `confirm`, `journal verify`, dry runs and `test` (on
    copies) stay allowed; `recover` finishes interrupted work but applies nothing.

    :raises MigrationsDisabled: naming the settings file and the line.
    """
    from flywall.core.appliance.settings import disabled

    reason = disabled(ws.settings)
    if reason is not None:
        raise errors.MigrationsDisabled(reason)


def migrate(
    ws: Workspace,
    *,
    target: str | None = None,
    accept_drift: bool = False,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    run_id: str | None = None,
    on_locked: Callable[[], None] | None = None,
    on_quiet: Callable[[], None] | None = None,
) -> RunReport:
    """Apply pending migrations (up to `target`); recovers interrupted work first.

    :param run_id: the run's id (the API chooses it to answer before the run ends).
    :param on_locked: called once the writer lock is held (the API answers 202 then).
    :param on_quiet: called, the lock still held, if the run was quiet
        (`flywall.core.commands.quiet.is_quiet`: it changed nothing, and its answer
        depends on nothing but files): the CLI then may keep the answer (its boot memo).
    """
    from flywall.core.runtime.engine import Engine

    refuse_if_disabled(ws)
    journaled = 0

    def counted(row: StoredEvent, event: ev.Event) -> None:
        nonlocal journaled
        journaled += 1
        if on_event is not None:
            on_event(row, event)

    with Engine(
        ws, "migrate", actor=actor, on_event=counted, on_progress=on_progress, run_id=run_id
    ) as e:
        if on_locked is not None:
            on_locked()
        report = e.migrate(target, accept_drift=accept_drift)
        if on_quiet is not None:
            from flywall.core.commands.quiet import is_quiet

            if is_quiet(e, report, journaled):
                on_quiet()
        return report


def rollback(
    ws: Workspace,
    *,
    version: str | None = None,
    steps: int | None = None,
    to: str | None = None,
    accept_drift: bool = False,
    yes: bool = False,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
    run_id: str | None = None,
    on_locked: Callable[[], None] | None = None,
) -> RunReport:
    """Roll back `version`, the newest `steps`, or everything after `to`, via `down`.

    An irreversible migration (no down) is rolled back only by restoring a backup taken
    before it, with `yes`. `run_id` and `on_locked` as for `migrate`.
    """
    from flywall.core.runtime.engine import Engine

    refuse_if_disabled(ws)
    with Engine(ws, "rollback", actor=actor, on_event=on_event, run_id=run_id) as e:
        if on_locked is not None:
            on_locked()
        return e.rollback(version=version, steps=steps, to=to, accept_drift=accept_drift, yes=yes)


def dry_run(
    ws: Workspace,
    *,
    target: str | None = None,
    accept_drift: bool = False,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
) -> DryRunReport:
    """Run the plan against copies; show its SQL and diffs; journal one DryRunPerformed.

    A `migrate` request does this instead when asked or when `dry_run = true` in settings
    (see `dry_run_if_wanted`).
    """
    from flywall.core.rehearsal.dryrun import dry_run as rehearse

    return rehearse(ws, target=target, accept_drift=accept_drift, actor=actor, on_event=on_event)


def dry_run_if_wanted(
    ws: Workspace,
    *,
    asked: bool,
    target: str | None = None,
    accept_drift: bool = False,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
) -> DryRunReport | None:
    """Run a `migrate` request as a dry run if it is one; None when it is a real run.

    A request is a dry run when `asked` (`--dry-run`, the API's `dry_run`) or when the
    settings say `dry_run = true`. The choice is made here, once, so that neither face
    holds it: each renders the report it gets, or goes on to `migrate`.
    """
    if not (asked or ws.settings.dry_run):
        return None
    return dry_run(ws, target=target, accept_drift=accept_drift, actor=actor, on_event=on_event)


def check_target(ws: Workspace, target: str | None) -> None:
    """Refuse a run before it starts (the API then answers at once, not with a failed run).

    :raises BrokenMigration: a migration file is broken (the API's 422).
    :raises UsageError: `target` is neither a migration version nor a schema_version (400).
    """
    migrations = ws.migrations
    if target is not None:
        from flywall.core.model.planner import resolve_target

        resolve_target(migrations, target)


# Named as its CLI subcommand (STYLE §2), not a pytest test: hence the PT028 noqa.
def test(
    ws: Workspace,
    mode: str,
    version: str | None = None,  # noqa: PT028
    *,
    actor: ev.Actor | None = None,  # noqa: PT028
) -> TrialReport:
    """Rehearse pending migrations on a copy: with-data, rollback, performance, isolation."""
    from flywall.core.rehearsal import trial

    return trial.run(ws, mode, version, actor=actor)


test.__test__ = False  # type: ignore[attr-defined]  # pytest must never collect it


def recover(
    ws: Workspace,
    *,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
) -> RunReport:
    """Resolve interrupted migrations and runs now; apply nothing unless `auto_migrate`.

    `recover` is what the boot-time unit runs before Flywall starts. With `auto_migrate =
    true` the box also applies what is pending there (`migrate` recovers first, in the
    same run), so a firmware update that shipped new migrations is complete before the
    daemon reads its files. With `enabled = false` it still finishes interrupted work (a
    refusal would hold Flywall back forever) but applies nothing, and its `note` says so.
    """
    from flywall.core.appliance.settings import disabled
    from flywall.core.runtime.engine import Engine

    # Disabled, recovery still runs: a half-moved box is never safer than a finished one.
    off = disabled(ws.settings)
    if ws.settings.auto_migrate and off is None:
        return migrate(ws, actor=actor, on_event=on_event)
    with Engine(ws, "recover", actor=actor, on_event=on_event) as e:
        decisions = e.recover()
        note = None if off is None else f"{off}: {_pending_count(ws, e.state)} pending left"
        unfinished = [d for d in decisions if "resume" in d.evidence]
        if unfinished:  # a half-done batched step whose migration failed when resumed
            d = unfinished[0]
            failure = errors.MigrationFailed(
                d.version, f"recovery of its {d.direction}", "ResumeFailed", d.evidence["resume"]
            )
            e.recorder.finish("failed", [], str(failure))
            raise failure
        if e.recorder.started:
            e.recorder.finish("completed", [])
        report = _recovery_report(e.run_id if e.recorder.started else None, decisions)
        report.note = note
        return report


def _pending_count(ws: Workspace, state: projection.Projection) -> str:
    """How many migrations on disk are not applied ("some" if the folder cannot be read)."""
    try:
        waiting = (State.PENDING, State.FAILED, State.ROLLED_BACK)
        return str(sum(1 for m in ws.migrations if state.state_of(m.version) in waiting))
    except errors.FlywallError:
        return "some"


def _recovery_report(run_id: str | None, decisions: list[Decision]) -> RunReport:
    from flywall.core.runtime.engine import RunReport

    outcome = "completed" if decisions or run_id else "nothing_to_do"
    return RunReport(command="recover", run_id=run_id, outcome=outcome, recovered=decisions)


_PY_TEMPLATE = '''"""{description}"""

component = "{component}"
# schema_version = "1.0.0"     # the component's version after up(); optional
# depends_on = []              # versions this migration needs applied first


def up(ctx, {arg}):
    ctx.log("{slug}: up")


def down(ctx, {arg}):
    ctx.log("{slug}: down")
'''

# Discovery refuses an empty up section, so the template's up holds a placeholder
# (a comment: applying it unedited changes nothing). The down stays empty, meaning
# irreversible, until the vendor writes one.
_SQL_TEMPLATE = """-- {description}
-- migrate:up
-- CREATE TABLE example (id INTEGER PRIMARY KEY, name TEXT NOT NULL);

-- migrate:down

"""

# Flywall's format (FLYWALL.md §4). The examples stay comments: applied unedited, the file
# only moves the config's schema_version on, from the newest any migration sets.
_DECLARATIVE_TEMPLATE = """\
# {description}
#
# A declarative config migration (Flywall's format; README, "Declarative config
# migrations"). Its down is inferred: the operations inverted, in reverse order.
migration "{start}" "{end}" {{
  description = "{description}"

  # operation "add_block" "ebpf" {{
  #   defaults = {{ enabled = false }}
  # }}
  # operation "rename_block" "vpn_link_group" {{
  #   new_name = "uplink_group"
  # }}
  # operation "add_attribute" "api.require_auth" {{
  #   defaults = {{ value = true }}
  # }}
}}
"""

_ARG = {"database": "db", "state": "records", "config": "config", "api": "document"}


def create(
    ws: Workspace,
    name: str,
    *,
    component: str | None = None,
    sql: bool = False,
    declarative: bool = False,
) -> Path:
    """Write a new migration file from a template, versioned now (UTC, to the minute).

    :param component: what it changes; database by default, config with `declarative`.
    :param declarative: write Flywall's declarative `.hcl` form (a config migration).
    :raises UsageError: a bad name, an unknown component, or --sql or --declarative with
        a component they do not write.
    """
    import re

    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise errors.UsageError(f"bad migration name {name!r}: use letters, digits, _")
    component = component or ("config" if declarative else "database")
    if component not in _ARG:
        raise errors.UsageError(f"unknown component {component!r}: use {', '.join(_ARG)}")
    if sql and (declarative or component != "database"):
        raise errors.UsageError("--sql migrations are database migrations")
    if declarative and component != "config":
        raise errors.UsageError("--declarative migrations are config migrations")
    ws.require_appliance()  # a folder that is not an appliance gets no invented tree
    directory = ws.paths.migrations_dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise errors.UsageError(f"{directory}: cannot create the folder: {e.strerror}") from e
    _refuse_duplicate_name(ws, directory, slug)
    version = _free_version(ws, directory)
    description = name.replace("_", " ").strip().capitalize()
    extension = "hcl" if declarative else "sql" if sql else "py"
    text = _template(ws, extension, component, slug, description)
    path = directory / f"{version}_{slug}.{extension}"
    try:
        with path.open("x", encoding="utf-8") as out:
            out.write(text)
    except OSError as e:
        raise errors.UsageError(f"{path}: cannot write the migration: {e.strerror}") from e
    return path


def _refuse_duplicate_name(ws: Workspace, directory: Path, slug: str) -> None:
    """Two migrations with one name make `log`, `debug` and reviews ambiguous: refuse the second.

    :raises UsageError: a migration (shipped, in the folder, or only on disk) has this slug.
    """
    same = [m.path for m in ws.migrations if m.slug == slug]
    on_disk = sorted(directory.glob(f"*_{slug}.*"))
    same += [str(p) for p in on_disk if p.name.split("_")[0].isdigit()]
    if same:
        raise errors.UsageError(f"a migration named {slug!r} already exists: {same[0]}")


def _free_version(ws: Workspace, directory: Path) -> str:
    """The first free minute from now on, as YYYYMMDDHHMM: always a valid UTC timestamp.

    Adding 1 to the number would give minute 60 after 59; stepping the time keeps the
    version a real time, so versions still sort as the files were created.
    """
    import datetime as dt

    taken = {m.version for m in ws.migrations}
    at = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    while (version := at.strftime("%Y%m%d%H%M")) in taken or any(directory.glob(f"{version}_*")):
        at += dt.timedelta(minutes=1)
    return version


def _template(ws: Workspace, extension: str, component: str, slug: str, description: str) -> str:
    """The new file's text for its form: Python, SQL or declarative."""
    if extension == "hcl":
        start, end = _next_config_versions(ws)
        return _DECLARATIVE_TEMPLATE.format(description=description, start=start, end=end)
    if extension == "sql":
        return _SQL_TEMPLATE.format(description=description)
    return _PY_TEMPLATE.format(
        description=description, component=component, arg=_ARG[component], slug=slug
    )


def _next_config_versions(ws: Workspace) -> tuple[str, str]:
    """The newest X.Y schema_version a config migration sets ("1.0" if none), and the next."""
    import re

    found = [(1, 0)]
    for m in ws.migrations:
        match = re.fullmatch(r"(\d+)\.(\d+)", m.schema_version or "")
        if m.component == "config" and match:
            found.append((int(match[1]), int(match[2])))
    major, minor = max(found)
    return f"{major}.{minor}", f"{major}.{minor + 1}"


# -- backups and repair -------------------------------------------------------------


class BackupRow(msgspec.Struct, kw_only=True):
    """One backup as `backup list` shows it."""

    backup_id: str
    created_at: str | None
    reason: str
    journal_seq: int
    size: int
    items: list[str]
    ok: bool | None
    """The files match their manifest digests; None: not checked (`create --no-verify`)."""


def backup_list(ws: Workspace) -> list[BackupRow]:
    """List complete backups, oldest first, each verified against its manifest."""
    from flywall.core.services import backup

    return [_backup_row(m, ok=not backup.verify(ws, m)) for m in backup.list_backups(ws)]


def _backup_row(manifest: Manifest, *, ok: bool | None) -> BackupRow:
    return BackupRow(
        backup_id=manifest.backup_id,
        created_at=iso(manifest.created_ns),
        reason=manifest.reason,
        journal_seq=manifest.journal_seq,
        size=manifest.size,
        items=[item.name for item in manifest.items],
        ok=ok,
    )


def backup_create(
    ws: Workspace,
    *,
    verify: bool = True,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
) -> BackupRow:
    """Back up every target now (the run id names it), journaled as its own run.

    What an operator takes before touching the box by hand; `migrate` takes its own.
    `verify` re-reads the copies against the digests taken of the sources, so a faulty
    copy is caught now rather than at restore time (about 0.2 s per GiB).
    """
    from flywall.core.runtime.engine import Engine
    from flywall.core.services import backup

    with Engine(ws, "backup create", actor=actor, on_event=on_event) as e:
        e.recover()
        manifest = e.take_backup(e.run_id, "operator: backup create")
        e.recorder.finish("completed", [])
    return _backup_row(manifest, ok=not backup.verify(ws, manifest) if verify else None)


def backup_restore(
    ws: Workspace,
    backup_id: str,
    *,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
) -> RunReport:
    """Verify a backup, take a safety backup, restore it, journal what it rolled back."""
    from flywall.core.runtime.engine import Engine

    with Engine(ws, "backup restore", actor=actor, on_event=on_event) as e:
        recovered = e.recover()
        undone = e.restore_backup(backup_id, safety=True)
        e.recorder.finish("completed", undone)
        report = _recovery_report(e.run_id, recovered)
        report.command, report.outcome, report.undone = "backup restore", "completed", undone
        return report


def backup_prune(ws: Workspace, *, keep: int = 1, actor: ev.Actor | None = None) -> list[str]:
    """Remove all but the newest `keep` backups (never the newest); return the removed ids."""
    from flywall.core.runtime.engine import Engine
    from flywall.core.services import backup

    if keep < 1:
        raise errors.UsageError("--keep must be at least 1: the newest backup is never pruned")
    with Engine(ws, "backup prune", actor=actor) as e:
        e.recover()
        needed = {run.backup_id for run in e.state.unconfirmed.values()}
        doomed = [
            m.backup_id
            for m in backup.list_backups(ws)[:-keep]
            if m.backup_id not in needed  # a confirmation window may still need it
        ]
        for backup_id in doomed:
            e.prune(backup_id, f"operator kept the newest {keep}")
        if e.recorder.started:
            e.recorder.finish("completed", [])
        return doomed


def confirm(
    ws: Workspace,
    *,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
) -> RunReport:
    """Confirm the runs awaiting confirmation (`confirm_within`), so they are kept."""
    from flywall.core.runtime.engine import Engine

    with Engine(ws, "confirm", actor=actor, on_event=on_event) as e:
        waiting = set(e.state.unconfirmed)
        recovered = e.recover()  # an expired window is rolled back first, not confirmed
        expired = sorted(waiting - set(e.state.unconfirmed))
        if expired and not e.state.unconfirmed:  # say what happened instead of "nothing"
            late = (
                f"too late to confirm: the window of run {', '.join(expired)} had closed, "
                "so it was rolled back (see history)"
            )
            e.recorder.finish("failed", [], error=late)
            raise errors.NothingToDo(late)
        confirmed = e.confirm()
        e.recorder.finish("completed", [])
        report = _recovery_report(e.run_id, recovered)
        report.command, report.outcome, report.done = "confirm", "completed", confirmed
        return report


def confirm_when_healthy(
    ws: Workspace,
    url: str,
    deadline_s: float,
    *,
    actor: ev.Actor | None = None,
) -> RunReport | None:
    """Confirm once Flywall answers `url`; what the confirm unit runs after each boot.

    Returns None when no run awaits confirmation (a normal boot: nothing to wait for).

    :raises UsageError: `url` is not http(s).
    :raises DaemonUnhealthy: no answer within `deadline_s`; the window stays open, and
        once it closes the next writing command rolls the run back.
    """
    from flywall.core.appliance import health

    if not url.startswith(("http://", "https://")):
        raise errors.UsageError(f"--when-healthy {url[:64]!r}: give an http:// or https:// URL")
    waiting = status(ws).awaiting_confirmation
    if not waiting:
        return None
    if not health.wait_until_answering(url, deadline_s):
        runs = ", ".join(f"{r} (window until {by or '-'})" for r, by in waiting.items())
        raise errors.DaemonUnhealthy(
            f"Flywall did not answer {url} within {deadline_s:g}s: not confirmed: {runs}; "
            "once the window closes the next writing command rolls it back"
        )
    return confirm(ws, actor=actor)


def install_units(root: Path, executable: str | None = None) -> list[Path]:
    """Place the shipped systemd units under ROOT/etc/systemd/system, enabled.

    :param executable: the `flywall-migration` the units run; default this installation's.
    :raises UsageError: no `flywall-migration` to point the units at, or the folder
        cannot be written.
    """
    import shutil
    import sys
    from pathlib import Path

    from flywall.core.appliance import systemd

    if executable is None:
        beside = Path(sys.executable).with_name("flywall-migration")
        executable = str(beside) if beside.exists() else shutil.which("flywall-migration")
    if not executable:
        raise errors.UsageError("no flywall-migration executable found to run from the units")
    try:
        return systemd.install(root, str(Path(executable).absolute()))
    except OSError as e:
        where = e.filename or root / "etc/systemd/system"
        raise errors.UsageError(f"{where}: cannot install the units: {e.strerror}") from e


def force(
    ws: Workspace,
    version: str,
    state: str,
    reason: str,
    *,
    actor: ev.Actor | None = None,
) -> RunReport:
    """Set a migration's state by hand, journaled with actor and reason (StateForced)."""
    from flywall.core.runtime.engine import Engine

    refuse_if_disabled(ws)
    if not reason.strip():
        raise errors.UsageError("force needs --reason: the journal records why")
    try:
        target = State(state)
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise errors.UsageError(f"unknown state {state!r}: use one of {names}") from None
    with Engine(ws, "force", actor=actor) as e:
        forced = _forced(ws, e, version, target, reason)
        e.recorder.append([(version, forced)])
        e.force_marker(version, target)
        e.recorder.finish("completed", [version])
        report = _recovery_report(e.run_id, [])
        report.command, report.outcome, report.done = "force", "completed", [version]
        return report


def repair(ws: Workspace, version: str, reason: str, *, actor: ev.Actor | None = None) -> RunReport:
    """Bind an applied migration to its edited file's checksum (as Flyway's `repair`).

    An intentional edit to an applied migration (a comment, a fixed `down`) otherwise has
    no way forward: every run refuses the changed file. Journaled with who and why, both
    digests kept; a database or state migration's marker takes the new checksum too. A
    repair cut between its event and the marker is finished by repairing again (the
    marker alone moves; nothing more is journaled).

    :raises UsageError: no reason, not applied, no file, or the file is unchanged (and
        the marker already agrees).
    """
    from flywall.core.runtime.engine import Engine

    refuse_if_disabled(ws)
    if not reason.strip():
        raise errors.UsageError("repair needs --reason: the journal records why")
    with Engine(ws, "repair", actor=actor) as e:
        record = e.state.migrations.get(version)
        if record is None or record.state is not State.APPLIED:
            raise errors.UsageError(f"migration {version} is not applied: nothing to repair")
        m = ws.migration(version)
        if m is None:
            raise errors.UsageError(f"migration {version} has no file to bind to")
        if m.checksum == record.checksum:
            if not e.marker_lags(version):
                raise errors.UsageError(f"migration {version} is unchanged: nothing to repair")
            # A repair cut after its durable MigrationRepaired: only the marker is left.
        else:
            repaired = ev.MigrationRepaired(
                checksum_before=record.checksum,
                checksum_after=m.checksum,
                reason=reason,
                actor=e.actor,
            )
            e.recorder.append([(version, repaired)])
        e.rebind_marker(version, m.checksum)
        e.recorder.finish("completed", [version])
        report = _recovery_report(e.run_id, [])
        report.command, report.outcome, report.done = "repair", "completed", [version]
        return report


def _forced(ws: Workspace, e: Engine, version: str, target: State, reason: str) -> ev.StateForced:
    """The StateForced event, with the file's identity when the journal has none yet.

    :raises UsageError: the version has no file and the journal never saw it run: there
        would be no checksum to bind it to.
    """
    record = e.state.migrations.get(version)
    m = ws.migration(version)
    if m is None and (record is None or not record.checksum):
        raise errors.UsageError(
            f"migration {version} has no file (and the journal never saw it run): nothing to force"
        )
    forced = ev.StateForced(
        from_state=e.state.state_of(version).value,
        to_state=target.value,
        reason=reason,
        actor=e.actor,
    )
    if m is not None and (record is None or not record.checksum):
        forced = msgspec.structs.replace(
            forced,
            component=m.component,
            checksum=m.checksum,
            file=m.path.rsplit("/", 1)[-1],
            slug=m.slug,
            description=m.description,
            schema_version=m.schema_version,
        )
    return forced


def debug(ws: Workspace, version: str) -> dict[str, Any]:
    """Everything known about one migration: file, checksums, state, events, log, backups."""
    from flywall.core.services import backup

    state, journal = _read_state(ws)
    m = ws.migration(version)
    rec = state.migrations.get(version)
    if m is None and rec is None:
        raise errors.UsageError(f"unknown migration {version}")
    items = history(ws, migration=version) if journal is not None else []
    if journal is not None:
        journal.close()
    return {
        "version": version,
        "file": m.path if m else None,
        "component": m.component if m else rec.component if rec else None,
        "description": m.description if m else rec.description if rec else "",
        "checksum_on_disk": m.checksum if m else None,
        "checksum_recorded": rec.checksum if rec else None,
        "state": (rec.state if rec else State.PENDING).value,
        "last_error": rec.last_error if rec else None,
        "sql": _debug_sql(ws, m, rec),
        "has_down": m.has_down if m else None,
        "events": items,
        "log": [e for e in items if e["kind"] == "MigrationLog"],
        "backups": [b.backup_id for b in backup.list_backups(ws) if version not in b.applied],
    }


def _debug_sql(ws: Workspace, m: Migration | None, rec: Any) -> dict[str, str | None] | None:
    """A SQL file's sections; for a pending Python database migration, its traced up."""
    if m is None:
        return None
    sql = {"up": m.up_sql, "down": m.down_sql, "verify": m.verify_sql}
    pending = rec is None or rec.state == State.PENDING
    if m.kind == "python" and m.component == "database" and pending:
        from flywall.core.rehearsal import dryrun

        sql["up"] = dryrun.traced_sql(ws, m.version)
    return sql


# -- notifications, audit and signatures ----------------------------------------------


def notify(ws: Workspace) -> list[notify_.ChannelResult]:
    """Deliver pending start/complete/failure notices to every channel (at least once)."""
    if not ws.settings.notification_channels:
        return []  # what deliver() answers then, without importing the outbox after every run
    from flywall.core.services import notify as outbox

    return outbox.deliver(ws)


def replay(ws: Workspace, until: str) -> audit.ReplayReport:
    """Show the state as it was at seq or ISO-8601 time `until`, replayed from the journal."""
    from flywall.core.services import audit as forensics

    return forensics.replay(ws, until)


def journal_recover_from_backup(
    ws: Workspace, backup_id: str, *, force: bool = False, actor: ev.Actor | None = None
) -> RescueReport:
    """Replace a damaged journal by a backup's copy and restore the targets from it.

    See `flywall.core.services.rescue`: the damaged journal is kept aside, never deleted.
    """
    from flywall.core.services import rescue

    return rescue.recover_from_backup(ws, backup_id, force=force, actor=actor)


def journal_export(ws: Workspace, out: TextIO) -> int:
    """Write every journal event to `out` as JSON lines; return how many."""
    from flywall.core.services import audit as forensics

    return forensics.export(ws, out)


def journal_export_to(ws: Workspace, path: Path) -> int:
    """Write the export to the file `path`, whole or not at all; return how many events."""
    from flywall.core.services import audit as forensics

    return forensics.export_to(ws, path)


def journal_verify_export(ws: Workspace, path: Path) -> audit.ExportReport:
    """Re-hash an exported journal offline; name the first altered line."""
    from flywall.core.services import audit as forensics

    return forensics.verify_export(ws, path)


def sign(ws: Workspace, key: Path) -> signing.SignReport:
    """Write signatures.json for the migrations directory, signed with Ed25519 `key`."""
    from flywall.core.scripts import signing as signer

    return signer.sign(ws, key)


# -- checks, the demo tree, backups -----------------------------------------------------


def validate(ws: Workspace, *, everything: bool = False) -> ValidationReport:
    """Run every check (`validate`); `everything` adds the `--all` ones."""
    from flywall.core.services.validate import validate as run_checks

    return run_checks(ws, everything=everything)


def verify_data(ws: Workspace) -> ValidationReport:
    """Run the data checks alone (`verify --data`)."""
    from flywall.core.services.validate import verify_data as run_data_checks

    return run_data_checks(ws)


def verdicts(report: ValidationReport) -> list[Verdict]:
    """Each check of a validation report with its level (ok, warn, fail) and scope."""
    from flywall.core.services.validate import verdicts as levels

    return levels(report)


def demo(directory: Path, layout: str) -> dict[str, str]:
    """Build a sample appliance tree in `directory` (`demo`)."""
    from flywall.core.appliance import demo as demo_tree

    return demo_tree.build(directory, layout)


def backup_manifest(ws: Workspace, backup_id: str) -> Manifest:
    """The manifest of `backup_id`; an unknown id raises before any question is asked."""
    from flywall.core.services import backup

    return backup.read_manifest(ws, backup_id)


def new_run_id() -> str:
    """A fresh run id, for a face that names a run before it starts (the API's background runs)."""
    from flywall.core.runtime.engine import new_run_id as fresh

    return fresh()
