"""Dry run: the whole plan against a sandbox, shown as SQL and diffs (DESIGN §7).

The real appliance is only read, under the writer lock so nothing moves while it is
copied; the plan then runs in a `Sandbox` through the ordinary engine, with an APSW exec
tracer on the copy of state.db. Statements are attributed to the migration whose
`MigrationStarted` came last; the engine's own statements (transactions, markers,
checkpoints, fingerprints) are left out. The only change to the real appliance is one
`DryRunPerformed` event in its journal.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import TYPE_CHECKING, Any

import apsw
import msgspec

from flywall.core.model import errors
from flywall.core.model import events as ev
from flywall.core.rehearsal import sandbox
from flywall.core.runtime import fileio
from flywall.core.runtime.recovery import IN_FLIGHT
from flywall.core.targets.database import bookkeeping, schema_fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable

    from flywall.core.appliance.workspace import Workspace
    from flywall.core.model.projection import Projection
    from flywall.journal import StoredEvent

__all__ = [
    "DryRunReport",
    "DryRunStep",
    "EngineStatements",
    "RecoveryNeeded",
    "Statement",
    "dry_run",
    "traced_sql",
]


class RecoveryNeeded(errors.ValidationFailed):
    """A previous run was interrupted; a dry run never recovers, so it refuses.

    `interrupted` names each migration left running and each run left open.
    """

    def __init__(self, interrupted: list[str]) -> None:
        super().__init__(
            f"dry run refused: {', '.join(interrupted)} interrupted and need recovery, "
            "which a dry run never does; run `flywall migration recover` first, then "
            "dry-run again"
        )
        self.interrupted = interrupted


class Statement(msgspec.Struct, kw_only=True):
    """One SQL statement a migration executed; `times` > 1 for consecutive repeats."""

    sql: str
    times: int = 1


class DryRunStep(msgspec.Struct, kw_only=True):
    """What one migration did in the sandbox."""

    version: str
    component: str
    description: str = ""
    ok: bool = True
    duration_ms: float = 0.0
    sql: list[Statement] = []
    log: list[str] = []
    error: str | None = None


class DryRunReport(msgspec.Struct, kw_only=True):
    """The output of `migrate --dry-run`: per migration, then the overall diffs.

    `journal_seq` is the seq of the one `DryRunPerformed` event written to the real
    journal; the diffs are unified diffs, empty when nothing changed.
    """

    run_id: str
    planned: list[str]
    steps: list[DryRunStep]
    ok: bool
    error: str | None = None
    schema_diff: str = ""
    config_diff: str = ""
    api_diff: str = ""
    journal_seq: int = 0


def dry_run(
    ws: Workspace,
    *,
    target: str | None = None,
    accept_drift: bool = False,
    actor: ev.Actor | None = None,
    on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
) -> DryRunReport:
    """Run the plan (up to `target`) against copies; journal one `DryRunPerformed`.

    A migration that fails is reported (`ok` False), not raised. Refusals that come
    before anything ran (drift, a changed checksum, an unknown target) are raised, and
    journal nothing.

    :param on_event: called with the one event written to the real journal.
    :raises RecoveryNeeded: the journal shows an interrupted migration or run.
    """
    from flywall.core.runtime.engine import Engine

    actor = actor or ev.current_actor()
    with Engine(ws, "migrate --dry-run", actor=actor, daemon=False) as real:
        _refuse_if_interrupted(real.state)
        report = _rehearse(ws, target, accept_drift=accept_drift, actor=actor)
        report.run_id = real.run_id
        event = ev.DryRunPerformed(planned=report.planned, actor=actor, ok=report.ok)
        # Aside from the run: a dry run is one audit event, not a run (no RunStarted or
        # RunFinished, nothing in `last_run`).
        row = real.recorder.append_aside(event)
        report.journal_seq = row.seq
    if on_event is not None:
        on_event(row, event)
    return report


def traced_sql(ws: Workspace, version: str) -> str | None:
    """The SQL a pending migration's up runs, traced on copies (what `debug V` shows).

    A Python database migration has no SQL text to show; rehearsing the plan up to it in a
    sandbox records what it executes. The real appliance is only read (nothing journaled).
    None when the rehearsal is refused or `version` did not run.
    """
    try:
        report = _rehearse(ws, version, accept_drift=False, actor=ev.current_actor())
    except errors.FlywallError:
        return None
    for step in report.steps:
        if step.version == version:
            return "\n".join(
                s.sql.rstrip().rstrip(";") + ";" + (f"  -- x{s.times}" if s.times > 1 else "")
                for s in step.sql
            )
    return None


def _real_names(copy: Workspace, ws: Workspace) -> Callable[[str], str]:
    """Return a function that puts the real file in a message for its sandbox copy."""
    fields = ("state_db", "config", "api_document", "journal")
    pairs = [(str(getattr(copy.paths, f)), str(getattr(ws.paths, f))) for f in fields]

    def real(message: str) -> str:
        for copied, path in pairs:
            message = message.replace(copied, path)
        return message

    return real


def _refuse_if_interrupted(state: Projection) -> None:
    """Refuse when recovery has work: it would write, and change what the plan is."""
    interrupted = [f"migration {r.version}" for r in state.in_state(*IN_FLIGHT)]
    interrupted += [f"run {run_id}" for run_id in state.open_runs]
    if interrupted:
        raise RecoveryNeeded(interrupted)


def _rehearse(
    ws: Workspace, target: str | None, *, accept_drift: bool, actor: ev.Actor
) -> DryRunReport:
    from flywall.core.runtime.engine import Engine

    capture = _Capture(bookkeeping(ws.settings.version_table))
    options = msgspec.structs.replace(ws.sqlite, exec_trace=capture.trace)
    error = None
    with sandbox.Sandbox(ws, sqlite=options) as sb:
        before = _contents(sb.ws)
        try:
            with Engine(sb.ws, "migrate --dry-run", actor=actor, on_event=capture.on_event) as e:
                e.migrate(target, accept_drift=accept_drift)
        except errors.FlywallError as exc:
            if not capture.steps:
                raise  # refused before any migration ran: there is nothing to report
            error = str(exc)
        after = _contents(sb.ws)
        real = _real_names(sb.ws, ws)
    steps = list(capture.steps.values())
    for step in steps:  # errors name the operator's files, not the deleted copies
        step.error = step.error and real(step.error)
    error = error and real(error)
    names = [str(p) for p in (ws.paths.state_db, ws.paths.config, ws.paths.api_document)]
    schema, config, api = (
        _diff(a, b, name) for a, b, name in zip(before, after, names, strict=True)
    )
    return DryRunReport(
        run_id="",
        planned=capture.planned,
        steps=steps,
        ok=error is None and all(s.ok for s in steps),
        error=error,
        schema_diff=schema,
        config_diff=config,
        api_diff=api,
    )


def _contents(ws: Workspace) -> tuple[list[str], list[str], list[str]]:
    """The sandbox's schema, flywall.hcl and api.json, as lines to diff."""
    return (
        sandbox.schema_lines(ws),
        sandbox.text_lines(fileio.read(ws.paths.config)),
        sandbox.text_lines(fileio.read(ws.paths.api_document)),
    )


def _diff(before: list[str], after: list[str], name: str) -> str:
    return "".join(difflib.unified_diff(before, after, name, f"{name} (after dry run)"))


_TRANSACTION = re.compile(r"^\s*(?:BEGIN|COMMIT|ROLLBACK|END)\b", re.IGNORECASE)


@functools.cache
def _fingerprint_sql() -> frozenset[str]:
    """The statements `schema_fingerprint` runs, learnt by tracing it once."""
    seen: set[str] = set()
    db = apsw.Connection(":memory:")

    def trace(_cursor: Any, sql: str, _bindings: Any) -> bool:
        seen.add(sql)
        return True

    db.exec_trace = trace
    schema_fingerprint(db)
    db.close()
    return frozenset(seen)


class EngineStatements:
    """Tells the engine's own statements from a migration's, as an exec tracer sees them.

    The engine's are: transaction control, the schema fingerprint's queries, anything
    naming our bookkeeping tables, and `sqlite_master` probes for them by parameter.
    """

    def __init__(self, own_tables: tuple[str, ...]) -> None:
        self._own_tables = frozenset(own_tables)
        self._mentions_own = re.compile(r"\b(?:" + "|".join(map(re.escape, own_tables)) + r")\b")

    def __call__(self, sql: str, bindings: Any) -> bool:
        """Return True when the engine, not the migration, issued `sql`."""
        if _TRANSACTION.match(sql) or sql in _fingerprint_sql() or self._mentions_own.search(sql):
            return True
        if sql == "PRAGMA schema_version":  # the fingerprint cache's cookie check
            return True
        values = bindings if isinstance(bindings, tuple) else ()
        return any(isinstance(v, str) and v in self._own_tables for v in values)


class _Capture:
    """Collects the sandbox run: events into steps, traced SQL into the running step."""

    def __init__(self, own_tables: tuple[str, ...]) -> None:
        self.planned: list[str] = []
        self.steps: dict[str, DryRunStep] = {}
        self._current: DryRunStep | None = None
        self._is_engine = EngineStatements(own_tables)

    def trace(self, _cursor: Any, sql: str, bindings: Any) -> bool:
        """APSW exec tracer: record the statement unless the engine issued it."""
        step = self._current
        if step is not None and not self._is_engine(sql, bindings):
            text = sql.strip().rstrip(";").rstrip()
            if step.sql and step.sql[-1].sql == text:
                step.sql[-1].times += 1
            else:
                step.sql.append(Statement(sql=text))
        return True

    def on_event(self, row: StoredEvent, event: ev.Event) -> None:
        """Engine hook: which migration runs now, its timing, outcome and log."""
        match event:
            case ev.RunStarted(planned=planned):
                self.planned = list(planned)
            case ev.MigrationStarted(component=component, description=description):
                self._current = DryRunStep(
                    version=row.migration, component=component, description=description
                )
                self.steps[row.migration] = self._current
            case ev.MigrationApplied(duration_ns=ns):
                self.steps[row.migration].duration_ms = ns / 1e6
            case ev.MigrationFailed(duration_ns=ns, error_type=kind, message=message):
                step = self.steps[row.migration]
                step.ok, step.duration_ms, step.error = False, ns / 1e6, f"{kind}: {message}"
            case ev.MigrationLog(message=message) if row.migration in self.steps:
                self.steps[row.migration].log.append(message)
