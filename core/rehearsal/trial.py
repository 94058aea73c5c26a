"""`test`: rehearse the pending migrations on throw-away copies (DESIGN §10).

Four modes, each on a `Sandbox` so the appliance is only read (under the writer lock, for
the moment it is copied):

- ``with-data``: apply every pending migration to a copy of the live data, then run each
  one's `verify` and the `validate` checks on the copy.
- ``rollback``: for each pending migration, up → down → up. The down must bring back the
  schema fingerprint, the data digest and the documents as they were before the up, and
  the second up must reproduce the first. A migration without a down is irreversible; one
  that fails either comparison is lossy.
- ``performance``: time each migration and count the rows it changed.
- ``isolation V``: a fresh database (Flywall's empty store, as the firmware creates it)
  with only what V depends on applied, then V up and down; the schema must return to
  what it was before V.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import apsw
import blake3
import msgspec

from flywall.core.model import errors, planner
from flywall.core.model import events as ev
from flywall.core.rehearsal import sandbox
from flywall.core.runtime import fileio, snapshot
from flywall.core.targets import registry
from flywall.core.targets.database import bookkeeping, schema_fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from flywall.core.appliance.workspace import Workspace
    from flywall.core.runtime.engine import Engine
    from flywall.core.scripts.discovery import Migration
    from flywall.journal import StoredEvent

__all__ = ["MODES", "TrialReport", "TrialStep", "data_digest", "run"]

MODES: tuple[str, ...] = ("with-data", "rollback", "performance", "isolation")


class TrialStep(msgspec.Struct, kw_only=True):
    """One migration's result.

    `outcome`: ok, failed (up or down raised), verify_failed (its `verify` did not hold),
    irreversible (no down), lossy (the down did not bring everything back), or skipped.
    """

    version: str
    component: str = ""
    description: str = ""
    outcome: str = "ok"
    duration_ms: float | None = None
    rows: int | None = None
    rows_per_s: float | None = None
    problems: list[str] = []
    diffs: dict[str, str] = {}
    """For a document that did not come back: the problem, then what changed (unified)."""
    error: str | None = None


class TrialReport(msgspec.Struct, kw_only=True):
    """The output of `test`; `checks` holds `validate`'s results (with-data only)."""

    mode: str
    ok: bool
    steps: list[TrialStep]
    checks: dict[str, str] = {}
    version: str | None = None
    prepared: list[str] = []
    error: str | None = None
    error_code: int = errors.EXIT_MIGRATION_FAILED
    """The exit code `error` carries (a refusal such as drift is 4, not 1)."""

    def named(self, outcome: str) -> list[str]:
        """Return the versions whose outcome is `outcome`."""
        return [s.version for s in self.steps if s.outcome == outcome]

    @property
    def exit_code(self) -> int:
        """4 when a migration is lossy or a check failed, 1 when one failed, else 0."""
        invalid = self.named("lossy") + self.named("verify_failed")
        if invalid or any(v != "ok" for v in self.checks.values()):
            return errors.EXIT_VALIDATION
        if self.error:
            return self.error_code
        if self.named("failed"):
            return errors.EXIT_MIGRATION_FAILED
        return errors.EXIT_OK


def run(
    ws: Workspace, mode: str, version: str | None = None, *, actor: ev.Actor | None = None
) -> TrialReport:
    """Run one `test` mode on a sandbox of `ws`.

    :param version: the migration `isolation` tests; only with that mode.
    :raises UsageError: an unknown mode, or `version` missing or unknown.
    :raises Busy: a run holds the writer lock (the copy would be half-way through it).
    """
    if mode not in MODES:
        raise errors.UsageError(f"unknown test mode {mode!r}: use one of {', '.join(MODES)}")
    if (mode == "isolation") != (version is not None):
        raise errors.UsageError("give a VERSION with --isolation, and only with it")
    trial = _Trial(ws, actor or ev.current_actor())
    if mode == "isolation":
        assert version is not None
        return trial.isolation(version)
    return {
        "with-data": trial.with_data,
        "rollback": trial.rollback,
        "performance": trial.performance,
    }[mode]()


# -- what is compared ------------------------------------------------------------------


def data_digest(db: apsw.Connection | None, exclude: tuple[str, ...] = ()) -> str:
    """Return the blake3 of every user table's rows; `exclude`d and SQLite tables left out.

    Rows are hashed in the order of their own values, not by rowid: rebuilding a table
    (SQLite's 12-step ALTER) may renumber rowids without losing anything.
    """
    h = blake3.blake3()
    if db is None:
        return h.hexdigest()
    tables = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ).fetchall()
    for (table,) in tables:
        if table in exclude:
            continue
        columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
        h.update(msgspec.msgpack.encode([table, columns]))
        order = ", ".join(str(i) for i in range(1, len(columns) + 1))
        for row in db.execute(f'SELECT * FROM "{table}" ORDER BY {order}'):
            h.update(msgspec.msgpack.encode(row))
    return h.hexdigest()


class _Observed(NamedTuple):
    """What must come back: schema, data, and both documents (parsed, not as bytes).

    What a trial looks at in its sandbox, not a projection snapshot (`runtime.snapshot`).
    """

    schema: str
    data: str
    config: Any
    api: Any
    texts: tuple[bytes | None, bytes | None]


def _observe(ws: Workspace) -> _Observed:
    exclude = bookkeeping(ws.settings.version_table)
    db = sandbox.open_database(ws)
    try:
        if db is None:
            schema, data = _EMPTY_SCHEMA, data_digest(None)
        else:
            schema, data = schema_fingerprint(db, exclude), data_digest(db, exclude)
    finally:
        if db is not None:
            db.close()
    config, api = fileio.read(ws.paths.config), fileio.read(ws.paths.api_document)
    return _Observed(schema, data, _config(config), _api(api), (config, api))


def _config(content: bytes | None) -> Any:
    """flywall.hcl as values: a down that restores every value but not every space is fine."""
    import hcl2

    if content is None:
        return None
    options = hcl2.SerializationOptions(with_comments=False)
    try:
        return hcl2.loads(content.decode("utf-8"), serialization_options=options)
    except Exception:  # unparsable after a migration: compare the bytes instead
        return content


def _api(content: bytes | None) -> Any:
    try:
        return None if content is None else msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content


def _compare(step: TrialStep, expected: _Observed, got: _Observed, when: str, than: str) -> None:
    """Add to `step` each part of `got` (taken `when`) that differs from `expected`."""
    import difflib

    # (what, index of its text in `texts`: documents show how they differ)
    parts = (
        ("schema fingerprint", None),
        ("data digest", None),
        ("flywall.hcl", 0),
        ("api.json", 1),
    )
    for (part, text), a, b in zip(parts, expected[:4], got[:4], strict=True):
        if a == b:
            continue
        problem = f"{part} {when} differs from {than}"
        step.problems = [*step.problems, problem]
        if text is not None:
            a_lines, b_lines = (sandbox.text_lines(x.texts[text]) for x in (expected, got))
            diff = difflib.unified_diff(a_lines, b_lines, f"{part} {than}", f"{part} {when}", n=1)
            step.diffs = {**step.diffs, problem: "".join(diff)}


def _empty_schema() -> str:
    db = apsw.Connection(":memory:")
    try:
        return schema_fingerprint(db)
    finally:
        db.close()


_EMPTY_SCHEMA = _empty_schema()


# -- the modes --------------------------------------------------------------------------


class _Trial:
    def __init__(self, ws: Workspace, actor: ev.Actor) -> None:
        self.ws = ws
        self.actor = actor

    @contextlib.contextmanager
    def _sandbox(self, *, fresh: bool = False, sqlite: Any = None) -> Iterator[sandbox.Sandbox]:
        """Copy the appliance under the writer lock (so no run is half-way through it).

        The lock is held only while copying: the rehearsal itself touches nothing real.
        """
        from flywall.core.runtime.engine import new_run_id
        from flywall.core.runtime.lock import Holder, WriterLock

        holder = Holder(
            run_id=new_run_id(),
            command="test",
            pid=self.actor.pid,
            user=self.actor.user,
            since_ns=time.time_ns(),
        )
        with contextlib.ExitStack() as stack:
            with WriterLock(self.ws.paths.lock, holder):
                box = stack.enter_context(sandbox.Sandbox(self.ws, fresh=fresh, sqlite=sqlite))
            yield box

    def _engine(
        self,
        box: sandbox.Sandbox,
        action: Callable[[Engine], object],
        on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
    ) -> errors.FlywallError | None:
        """Run `action` on an engine over the sandbox; return the error, if any."""
        from flywall.core.runtime.engine import Engine

        try:
            with Engine(box.ws, "test", actor=self.actor, on_event=on_event) as e:
                action(e)
        except errors.FlywallError as exc:
            return exc
        return None

    def _plan(self, ws: Workspace) -> list[Migration]:
        journal = ws.read_journal()
        try:
            state = snapshot.load(journal)
        finally:
            if journal is not None:
                journal.close()
        states = {v: r.state for v, r in state.migrations.items()}
        by_version = {m.version: m for m in ws.migrations}
        return [by_version[v] for v in planner.plan_up(ws.migrations, states)]

    def with_data(self) -> TrialReport:
        """Apply everything pending to a copy, then verify each and validate the copy."""
        from flywall.core.services.validate import validate

        meter = _Meter(self.ws)
        with self._sandbox() as box:
            error = self._engine(box, lambda e: e.migrate(), meter.on_event)
            steps = list(meter.steps.values())
            for step in steps:
                m = box.ws.migration(step.version)
                if step.outcome == "ok" and m is not None and m.has_verify:
                    problem = _verify(box.ws, m)
                    if problem:
                        step.outcome, step.problems = "verify_failed", [problem]
            checks = validate(box.ws).checks
        report = TrialReport(mode="with-data", ok=False, steps=steps, checks=checks)
        _failed(report, error)
        report.ok = report.exit_code == errors.EXIT_OK
        return report

    def performance(self) -> TrialReport:
        """Apply everything pending to a copy; time each migration and count its rows."""
        meter = _Meter(self.ws)
        options = msgspec.structs.replace(self.ws.sqlite, exec_trace=meter.trace)
        with self._sandbox(sqlite=options) as box:
            error = self._engine(box, lambda e: e.migrate(), meter.on_event)
        report = TrialReport(mode="performance", ok=False, steps=list(meter.steps.values()))
        _failed(report, error)
        report.ok = report.exit_code == errors.EXIT_OK
        return report

    def rollback(self) -> TrialReport:
        """Up → down → up each pending migration on a copy; name irreversible and lossy ones."""
        steps: list[TrialStep] = []
        with self._sandbox() as box:
            plan = self._plan(box.ws)
            for i, m in enumerate(plan):
                step = _step_for(m)
                steps.append(step)
                if not self._round_trip(box, m, step):
                    steps += [_step_for(rest, outcome="skipped") for rest in plan[i + 1 :]]
                    break
        report = TrialReport(mode="rollback", ok=False, steps=steps)
        report.ok = report.exit_code == errors.EXIT_OK
        return report

    def _round_trip(self, box: sandbox.Sandbox, m: Migration, step: TrialStep) -> bool:
        """Fill `step`; return False when a failure leaves later migrations untestable."""
        v = m.version
        before = _observe(box.ws)
        t0 = time.monotonic_ns()
        if error := self._engine(box, lambda e: e.migrate(v)):
            step.outcome, step.error = "failed", f"up: {error}"
            return False
        step.duration_ms = (time.monotonic_ns() - t0) / 1e6
        applied = _observe(box.ws)
        if not m.has_down:
            step.outcome = "irreversible"
            return True
        if error := self._engine(box, lambda e: e.rollback(version=v)):
            step.outcome, step.error = "failed", f"down: {error}"
            return False
        undone = _observe(box.ws)
        if error := self._engine(box, lambda e: e.migrate(v)):
            step.outcome, step.error = "failed", f"second up: {error}"
            return False
        _compare(step, before, undone, "after down", "before up")
        _compare(step, applied, _observe(box.ws), "after up → down → up", "after the first up")
        if step.problems:
            step.outcome = "lossy"
        return True

    def isolation(self, version: str) -> TrialReport:
        """On a fresh store with only its dependencies applied: `version` up, then down."""
        m = self.ws.migration(version)
        if m is None:
            raise errors.UsageError(f"unknown migration {version}: no such file")
        needed = planner.requirements(self.ws.migrations, version)
        earlier = sorted(needed, key=planner.order_key)
        step = _step_for(m)
        report = TrialReport(mode="isolation", ok=False, steps=[step], version=version)
        with self._sandbox(fresh=True) as box:
            # Alone: the sandbox sees only `version` and what it depends on, so another
            # migration's assumptions (a vendor's tables) never decide this one's test.
            box.ws.migrations = [x for x in box.ws.migrations if x.version in {*needed, version}]
            done: list[str] = []
            if earlier:
                error = self._engine(box, lambda e: done.extend(e.migrate(earlier[-1]).done))
                report.prepared = done
                if error:
                    _failed(report, error, f"building up to {version} failed: ")
                    step.outcome = "skipped"
                    return report
            self._isolated(box, m, step)
        report.ok = report.exit_code == errors.EXIT_OK
        return report

    def _isolated(self, box: sandbox.Sandbox, m: Migration, step: TrialStep) -> None:
        before = _observe(box.ws)
        t0 = time.monotonic_ns()
        if error := self._engine(box, lambda e: e.migrate(m.version)):
            step.outcome, step.error = "failed", f"up: {error}"
            return
        step.duration_ms = (time.monotonic_ns() - t0) / 1e6
        if not m.has_down:
            step.outcome = "irreversible"
            return
        if error := self._engine(box, lambda e: e.rollback(version=m.version)):
            step.outcome, step.error = "failed", f"down: {error}"
            return
        _compare(step, before, _observe(box.ws), "after down", f"before {m.version}")
        if step.problems:
            step.outcome = "lossy"


def _failed(report: TrialReport, error: errors.FlywallError | None, prefix: str = "") -> None:
    if error is not None:
        report.error, report.error_code = f"{prefix}{error}", error.exit_code


def _step_for(m: Migration, outcome: str = "ok") -> TrialStep:
    return TrialStep(
        version=m.version, component=m.component, description=m.description, outcome=outcome
    )


def _verify(ws: Workspace, m: Migration) -> str | None:
    """Run `m`'s verify on the sandbox, as `validate` runs it on a box; return what failed."""
    from flywall.core.services.validate import verify_migration
    from flywall.core.targets.database import open_existing

    db = (
        open_existing(ws.paths.state_db, ws.settings.version_table)
        if registry.marked(m.component)
        else None
    )
    target = registry.target_for(m.component, ws.file_targets(), db, state_db=ws.paths.state_db)
    try:
        verify_migration(ws.settings, m, target)
    except (Exception, SystemExit) as e:  # the vendor's sys.exit() too: a failed check
        return f"verify: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        if db is not None:
            db.close()
    return None


class _Meter:
    """Per-migration timing (from the journal's events) and rows changed (from SQLite).

    Rows are `total_changes()` deltas, settled statement by statement in the exec tracer
    so the engine's own bookkeeping rows (markers, versions, checkpoints) are left out.
    """

    def __init__(self, ws: Workspace) -> None:
        from flywall.core.rehearsal.dryrun import EngineStatements

        self.steps: dict[str, TrialStep] = {}
        self._is_engine = EngineStatements(bookkeeping(ws.settings.version_table))
        self._db: apsw.Connection | None = None
        self._total = 0
        self._engine_last = True
        self._user_rows = 0
        self._rows_at_start = 0

    def trace(self, cursor: Any, sql: str, bindings: Any) -> bool:
        """APSW exec tracer: charge the changes since the last statement to its issuer."""
        if self._db is None:
            self._db = cursor.connection
            self._total = self._db.total_changes()
        self._settle()
        self._engine_last = self._is_engine(sql, bindings)
        return True

    def _settle(self) -> None:
        if self._db is None:
            return
        total = self._db.total_changes()
        if not self._engine_last:
            self._user_rows += total - self._total
        self._total = total

    def on_event(self, row: StoredEvent, event: ev.Event) -> None:
        """Engine hook: open a step on MigrationStarted, close it on its outcome."""
        match event:
            case ev.MigrationStarted(component=component, description=description):
                self._settle()
                self._rows_at_start = self._user_rows
                self.steps[row.migration] = TrialStep(
                    version=row.migration, component=component, description=description
                )
            case ev.MigrationApplied(duration_ns=ns) | ev.MigrationFailed(duration_ns=ns):
                step = self.steps[row.migration]
                step.duration_ms = ns / 1e6
                if isinstance(event, ev.MigrationFailed):
                    step.outcome, step.error = "failed", f"{event.error_type}: {event.message}"
                if registry.marked(step.component) and self._db is not None:
                    self._settle()
                    step.rows = self._user_rows - self._rows_at_start
                    step.rows_per_s = step.rows / (ns / 1e9) if ns else None
