"""The engine: one run under the writer lock (DESIGN §7).

take the lock → replay the journal → recover anything interrupted → check the applied
files' checksums → plan → for each migration: MigrationStarted (durable) → apply in the
target together with its marker → MigrationApplied → RunFinished.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any, Self

import apsw
import msgspec

from flywall.core.model import errors, planner, projection
from flywall.core.model import events as ev
from flywall.core.model.lifecycle import Lifecycle, State
from flywall.core.model.times import iso_seconds
from flywall.core.runtime import chaincheck, pytimeout, recovery, snapshot
from flywall.core.runtime.context import MigrationContext
from flywall.core.runtime.crash import crashpoint
from flywall.core.runtime.lock import Holder, WriterLock
from flywall.core.runtime.recorder import Recorder
from flywall.core.runtime.watchdog import Watchdog
from flywall.core.targets import registry
from flywall.core.targets.database import DatabaseTarget
from flywall.core.targets.protocol import Step
from flywall.core.targets.statedb import RecordsTarget, SchemaTarget

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

    from flywall.core.appliance.workspace import Workspace
    from flywall.core.model.projection import MigrationRecord
    from flywall.core.runtime.overlap import Beside
    from flywall.core.scripts.discovery import Migration
    from flywall.core.services.backup import Manifest
    from flywall.core.services.notify import Courier
    from flywall.core.targets.protocol import Target
    from flywall.journal import Journal, StoredEvent


class RunReport(msgspec.Struct, kw_only=True):
    """What a writing command did, for the CLI and the API to render."""

    command: str
    run_id: str | None
    outcome: str
    done: list[str] = []
    undone: list[str] = []
    confirm_by: str | None = None
    recovered: list[recovery.Decision] = []
    error: str | None = None
    note: str | None = None
    """One line the operator must see, e.g. why `recover` left pending migrations alone."""


def _existing_parent(path: Path) -> Path:
    """The nearest folder of `path` that exists (settings may name folders not made yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _may_hold_partials(backups: Path) -> bool:
    """True if `backups` holds a dot-named entry, the only kind a cut backup leaves behind.

    `backup.remove_partials` applies the exact rule; a box without one (every boot but the
    one after a cut) does not import the backup service to learn that.
    """
    try:
        return any(entry.name.startswith(".") for entry in backups.iterdir())
    except OSError:  # no backups folder yet (an unreadable one fails the next backup loudly)
        return False


def _may_prune(backups: Path) -> bool:
    """True if `backups` may hold two complete backups: retention never prunes the newest.

    `Engine._prune_backups` applies the exact rule (`backup.list_backups`); a box with at
    most one backup (a rollback after one `migrate`) does not import the backup service
    (and `shutil` with its compressors) to learn that.
    """
    try:
        named = [entry for entry in backups.iterdir() if not entry.name.startswith(".")]
    except FileNotFoundError:  # no backups folder yet: nothing to prune
        return False
    except OSError:  # the service reads it, and reports it, as before
        return True
    return len(named) > 1  # one besides the newest


def new_run_id() -> str:
    """Return a sortable, readable run id, e.g. ``20261126T013000-3fa9c1``."""
    # os.urandom, not `secrets`: the id only needs to be unique, and `secrets` (hmac,
    # hashlib, random) costs every writing command ~4 ms of imports.
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


def _courier(ws: Workspace) -> Courier | None:
    """The run's notification delivery (services/notify.py); None, unimported, without channels."""
    if not ws.settings.notification_channels or ws.sandbox:
        return None
    from flywall.core.services.notify import Courier

    return Courier(ws)


def _interrupted(exc: BaseException | None) -> bool:
    """^C or SIGTERM: its notice waits for the next delivery rather than hold the exit up."""
    return isinstance(exc, (KeyboardInterrupt, errors.RunInterrupted))


class Engine:
    """Everything a writing command needs, held for the length of one run."""

    def __init__(
        self,
        workspace: Workspace,
        command: str,
        *,
        actor: ev.Actor | None = None,
        on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
        run_id: str | None = None,
        daemon: bool = True,
    ) -> None:
        """`daemon=False` for a run that touches no target (the dry run's audit event)."""
        self.ws = workspace
        self.command = command
        self.actor = actor or ev.current_actor()
        self.run_id = run_id or new_run_id()  # the API picks it, to answer 202 at once
        self._on_event = on_event
        self._on_progress = on_progress
        self._lock = WriterLock(
            workspace.paths.lock,
            Holder(
                run_id=self.run_id,
                command=command,
                pid=self.actor.pid,
                user=self.actor.user,
                since_ns=time.time_ns(),
            ),
            wait=workspace.lock_wait,
        )
        self._db: DatabaseTarget | None = None
        self._accepted_drift: list[str] = []
        self._backup_id: str | None = None
        self._inherited: list[str] = []
        self._watchdog = Watchdog()
        self._inherited_backup: str | None = None
        self._manage_daemon = daemon and not workspace.sandbox
        self._start_owed = False
        self._courier = _courier(workspace)
        self.journal: Journal
        self.recorder: Recorder

    def __enter__(self) -> Self:
        self.ws.require_appliance()  # before the lock: it would create folders
        self._lock.__enter__()
        try:
            self.journal = self.ws.write_journal()
            self._preflight_chain()
            state = snapshot.load_for_writer(self.journal)
            self.lifecycle = Lifecycle()
            self.recorder = Recorder(
                self.journal,
                state,
                self.lifecycle,
                self.run_id,
                command=self.command,
                actor=self.actor,
                on_event=self._recorded,
            )
            if self._manage_daemon:
                self._stop_daemon()
        except BaseException:
            if getattr(self, "journal", None) is not None:
                self.journal.close()
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        not_started: errors.DaemonNotStarted | None = None
        try:
            if self._start_owed:
                try:
                    self._start_daemon(raise_on_failure=exc is None)
                except errors.DaemonNotStarted as e:
                    not_started = e  # raised once the run is closed properly
            if self.recorder.started:
                crashpoint("before-snapshot")
                snapshot.save(self.journal, self.recorder.projection)
                chaincheck.record_after_run(self.journal)  # so the next writer skips this run
            if self._db is not None:
                self._db.close()
            self.journal.close()
        finally:
            self._lock.__exit__(exc_type, exc, tb)
            if self._courier is not None:  # after the lock: a dead channel holds no one up
                self._courier.finish(interrupted=_interrupted(exc))
        if not_started is not None:
            raise not_started

    def _recorded(self, row: StoredEvent, event: ev.Event) -> None:
        """Each journaled event of the run: to the courier (start notice), then the caller."""
        if self._courier is not None:
            self._courier.on_event(event)
        if self._on_event is not None:
            self._on_event(row, event)

    def _preflight_chain(self) -> None:
        """Refuse to write on a journal whose hash chain is broken (DESIGN §7 pre-flight).

        Walks the events after the chain's verified point (`chaincheck`), not all history.

        :raises JournalTampered: naming the first bad seq (translated by the workspace).
        """
        chaincheck.check_chain(self.journal)

    # -- the daemon (core/appliance/daemon.py) -------------------------------------------

    def _stop_daemon(self) -> None:
        """Never race the daemon: refuse while it runs, or stop it with `stop_command`.

        A daemon an earlier run stopped and never started again (a cut between the two) is
        owed a start: this run gives it at its end.

        :raises Busy: the daemon runs and no `stop_command` is set, or stopping it failed.
        """
        from flywall.core.appliance import daemon

        settings, run_dir = self.ws.settings, self.ws.paths.run_dir
        assert run_dir is not None
        stop = settings.stop_command
        self._start_owed = stop is not None and self._daemon_owed_start()
        pid = daemon.live_pid(run_dir)
        if pid is None:
            return
        pid_file = self.ws.shown(run_dir / daemon.PID_FILE)
        if stop is None:
            raise errors.Busy(
                f"Flywall is running (pid {pid}, {pid_file}): stop it first, or set "
                f"stop_command and start_command in "
                f"{self.ws.shown(self.ws.paths.settings or self.ws.paths.config)}"
            )
        self._journal_daemon(ev.DaemonStopRequested(pid=pid, command=list(stop)))
        result = daemon.run(stop)
        crashpoint("after-daemon-stop")
        if not result.ok or not daemon.wait_gone(run_dir, pid):
            self._journal_daemon(
                ev.DaemonCommandFailed(
                    which="stop", exit_code=result.exit_code, output=result.output
                )
            )
            self._start_daemon(raise_on_failure=False)  # leave it as it was found
            why = f"exit {result.exit_code}" if not result.ok else f"pid {pid} still alive"
            raise errors.Busy(
                f"stop_command failed ({why}): {result.output or 'no output'}; nothing was changed"
            )
        self._journal_daemon(ev.DaemonStopped(pid=pid, output=result.output))
        self._start_owed = True

    def _start_daemon(self, *, raise_on_failure: bool) -> None:
        """Call `start_command`; journal what it did.

        :raises DaemonNotStarted: it failed and `raise_on_failure` (the run itself went well).
        """
        from flywall.core.appliance import daemon

        start = self.ws.settings.start_command
        assert start is not None
        crashpoint("before-daemon-start")
        result = daemon.run(start)
        if result.ok:
            self._journal_daemon(ev.DaemonStarted(command=list(start), output=result.output))
            self._start_owed = False
            return
        self._journal_daemon(
            ev.DaemonCommandFailed(which="start", exit_code=result.exit_code, output=result.output)
        )
        self._start_owed = False  # the next writing run tries again (no DaemonStarted)
        if raise_on_failure:
            raise errors.DaemonNotStarted(
                f"start_command failed (exit {result.exit_code}): "
                f"{result.output or 'no output'}; start Flywall by hand"
            )

    def _daemon_owed_start(self) -> bool:
        """True if the journal's last stop request has no `DaemonStarted` after it."""
        row = self.journal.connection.execute(
            "SELECT kind FROM events WHERE kind IN ('DaemonStopRequested', 'DaemonStarted') "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return row is not None and row[0] == "DaemonStopRequested"

    def _journal_daemon(self, event: ev.Event) -> None:
        """Append a daemon event at once, durable, under this run's id (not a run step)."""
        self.recorder.append_aside(event)

    @property
    def state(self) -> projection.Projection:
        """The live projection (identical to a replay of the journal)."""
        return self.recorder.projection

    def database(self) -> DatabaseTarget:
        """Open state.db once per run."""
        if self._db is None:
            options = self.ws.sqlite
            self._db = DatabaseTarget(
                self.ws.paths.state_db,
                self.ws.settings.version_table,
                vfs=options.vfs,
                synchronous=options.target_synchronous,
                autocheckpoint=options.wal_autocheckpoint,
            )
            if options.exec_trace is not None:
                self._db.db.exec_trace = options.exec_trace
        return self._db

    def existing_database(self) -> DatabaseTarget | None:
        """Open state.db only if it exists (recovery must not create it)."""
        if self._db is None and self.ws.paths.state_db.exists():
            return self.database()
        return self._db

    # -- commands ---------------------------------------------------------------------

    def recover(self) -> list[recovery.Decision]:
        """Resolve whatever a previous run left interrupted (the `recover` command's work).

        Recovery (core/runtime/recovery.py) decides, from evidence and the journal; this
        acts on its decisions where only the engine can: it journals the restart of a cut
        rollback, resumes half-done steps (`resume_step`), and carries the interrupted
        runs' auto-rollback or plan on.
        """
        if _may_hold_partials(self.ws.paths.backups):
            from flywall.core.services import backup  # lazy: shutil, zlib... (~5 ms a boot)

            backup.remove_partials(self.ws)
        for cut in recovery.cut_rollbacks(self.state, self.existing_database()):
            self._reopen_cut_rollback(cut)
        outcome = recovery.recover(self.recorder, self.existing_database(), self.ws, self)
        for run in outcome.carry_on:
            if run.undo:  # a failed run cut off in the middle of its auto_rollback
                self._backup_id = run.backup_id
                self._auto_rollback(run.applied)
            else:  # this run completes that run's plan: its undo covers both
                self._inherited += run.applied
                self._inherited_backup = self._inherited_backup or run.backup_id
        self._expire_unconfirmed()
        self._backup_id = None
        self.recorder.flush()  # planning reads the live projection: no event may wait
        return outcome.decisions

    def _reopen_cut_rollback(self, cut: recovery.CutRollback) -> None:
        """Put a batched `down` an older release left half done back in flight.

        A new `MigrationStarted` (down), durable before any change, makes the step in
        flight again, and recovery then finishes it from its checkpoint.
        """
        db = self.database()
        record = self.state.record(cut.version)
        m = self.source_of(cut.version)
        started = self._started(m, "down", record.attempts, db.fingerprint())
        note = ev.MigrationLog(
            message=f"finishing a rollback cut after {cut.rows} rows of {cut.table}, which an "
            "earlier recovery left half done",
            level="warning",
        )
        self.recorder.append([(cut.version, started), (cut.version, note)])

    def resume_step(self, record: MigrationRecord) -> str | None:
        """Run a half-done batched state step on from its checkpoint, to its end.

        Recovery's "resume": the step's own MigrationStarted explains it; its batches are
        journaled as they commit, and its last transaction moves the marker. Returns None,
        or what failed (journaled as MigrationFailed, as any step's failure is).
        """
        direction = record.direction or "up"
        m = self.source_of(record.version)
        started = self._started(m, direction, record.attempts, None)
        t0 = time.monotonic_ns()
        try:
            self._in_database(m, direction, started)
        except BaseException as e:
            try:
                self._failed(record.version, direction, e, t0)
            except errors.MigrationFailed as failed:  # the vendor's error, classified
                e = failed
            if not isinstance(e, (Exception, SystemExit)):
                raise  # Ctrl-C, journaled as interrupted: the command ends here
            if isinstance(e, errors.MigrationFailed):
                return f"{e.error_type}: {e.detail}"
            return str(e)
        return None

    def marker_lags(self, version: str) -> bool:
        """Tell whether state.db's marker holds another checksum than the journal's.

        That is a `repair` cut between its durable MigrationRepaired and the marker.
        """
        record = self.state.record(version)
        db = self.existing_database()
        if not registry.marked(record.component) or db is None:
            return False
        marked = db.markers().get(version)
        return marked is not None and marked != record.checksum

    def rebind_marker(self, version: str, checksum: str) -> None:
        """After a durable MigrationRepaired: the marker takes the file's new checksum.

        A cut before the commit is drift (marker and journal checksums differ) that
        `validate` names; repairing again moves the marker alone (`marker_lags`).
        """
        record = self.state.record(version)
        db = self.existing_database()
        if not registry.marked(record.component) or db is None or not db.has_marker(version):
            return
        with db.transaction(record.component):
            db.rebind_marker(version, checksum)

    def force_marker(self, version: str, target: State) -> None:
        """After a durable StateForced: make state.db's marker say what the journal now says.

        A database or state migration forced to applied gets its marker (and the
        component's `schema_versions` row), one forced anywhere else loses it; otherwise
        the next run would stop on drift between the two. A cut before the commit leaves
        that drift, named by `validate`; forcing again finishes it.
        """
        record = self.state.record(version)
        applied = target is State.APPLIED
        if not registry.marked(record.component):
            return
        db = self.database() if applied else self.existing_database()  # as applying would
        if db is None or db.has_marker(version) == applied:
            return
        with db.transaction(record.component):
            db.move_marker(
                version=version,
                component=record.component,
                checksum=record.checksum,
                run_id=self.run_id,
                schema_version=record.schema_version,
                applied=applied,
                previous=None if applied else self._previous(record.component, version),
            )

    def _expire_unconfirmed(self) -> None:
        """Roll back runs whose confirmation window closed unconfirmed (also after a reboot)."""
        now = time.time_ns()
        for run in list(self.state.unconfirmed.values()):
            if run.confirm_by_ns is not None and now > run.confirm_by_ns:
                self.recorder.append_for_run(
                    run.run_id, ev.ConfirmationExpired(confirm_by_ns=run.confirm_by_ns)
                )
        for run in self.state.expired.values():  # also one whose undo a cut interrupted
            still = [  # applied by that run still: not re-applied by a later one
                v
                for v in run.applied
                if self.state.state_of(v) is State.APPLIED
                and self.state.record(v).applied_seq < run.expired_seq
            ]
            if still:
                self._backup_id = run.backup_id
                self._undo(still)

    def confirm(self) -> list[str]:
        """Confirm every run awaiting confirmation; return their ids.

        :raises NothingToDo: no run awaits confirmation.
        """
        waiting = list(self.state.unconfirmed)
        if not waiting:
            raise errors.NothingToDo("no run awaits confirmation")
        for run_id in waiting:
            self.recorder.append_for_run(run_id, ev.RunConfirmed(actor=self.actor))
        return waiting

    def _check_signatures(self) -> None:
        """With `require_signatures`, refuse migrations not signed by a trusted key.

        :raises SignatureRefused: naming the unsigned, modified or untrusted file.
        """
        if self.ws.settings.require_signatures:
            from flywall.core.scripts import signing  # lazy: only with require_signatures

            signing.check(self.ws)

    def migrate(self, target: str | None = None, *, accept_drift: bool = False) -> RunReport:
        """Apply every pending migration (up to `target`), in dependency order."""
        recovered = self.recover()
        self.check_checksums()
        self._check_signatures()
        self.check_drift(accept=accept_drift)
        nodes = self.ws.migrations
        plan = planner.plan_up(nodes, self._states(), target)
        by_version = {m.version: m for m in nodes}
        planner.check_config_ceiling(
            [by_version[v] for v in plan], self.ws.settings.max_config_version
        )
        return self._execute(
            plan, lambda v, attempt: self._up(by_version[v], attempt), recovered, target
        )

    def rollback(
        self,
        version: str | None = None,
        steps: int | None = None,
        to: str | None = None,
        *,
        accept_drift: bool = False,
        yes: bool = False,
    ) -> RunReport:
        """Roll back one version, the newest `steps`, or everything after `to`.

        A migration without `down` can only be rolled back by restoring a backup taken
        before it, which rolls back everything applied since too: that needs `yes`.
        """
        recovered = self.recover()
        self.check_checksums()
        self._check_signatures()
        self.check_drift(accept=accept_drift)
        applied = [(r.version, r.applied_seq) for r in self.state.in_state(State.APPLIED)]
        dependents: dict[str, list[str]] = {}
        for m in self.ws.migrations:
            for dep in m.depends_on:
                dependents.setdefault(dep, []).append(m.version)
        plan = planner.plan_down(applied, dependents, version=version, steps=steps, to=to)
        sources = {v: self.source_of(v) for v in plan}
        irreversible = [v for v, m in sources.items() if not m.has_down]
        if irreversible:
            return self._rollback_by_backup(irreversible, recovered, yes=yes)
        return self._execute(plan, lambda v, _: self._down(sources[v]), recovered, None)

    # -- steps ------------------------------------------------------------------------

    def _rollback_by_backup(
        self, irreversible: list[str], recovered: list[recovery.Decision], *, yes: bool
    ) -> RunReport:
        """Restore the newest backup taken before every irreversible migration of the plan.

        :raises UsageError: without `yes` (naming the backup and all it would roll back),
            or when no such backup exists.
        """
        from flywall.core.services import backup

        names = ", ".join(irreversible)
        applied = {r.version for r in self.state.in_state(State.APPLIED)}
        usable = [
            m
            for m in backup.list_backups(self.ws)
            if set(m.applied) <= applied and not set(irreversible) & set(m.applied)
        ]
        if not usable:
            raise errors.UsageError(f"{names} is irreversible (no down) and no backup predates it")
        chosen = usable[-1]
        also = sorted(applied - set(chosen.applied))
        if not yes:
            raise errors.UsageError(
                f"{names} is irreversible (no down); restoring backup {chosen.backup_id} "
                f"would roll back {', '.join(also)}: run again with --yes to do that"
            )
        undone = self.restore_backup(chosen.backup_id, safety=True)
        self.recorder.finish("completed", undone)
        return RunReport(
            command=self.command,
            run_id=self.run_id,
            outcome="completed",
            done=undone,
            undone=undone,
            recovered=recovered,
        )

    def _execute(
        self,
        plan: list[str],
        step: Callable[[str, int], None],
        recovered: list[recovery.Decision],
        target: str | None,
    ) -> RunReport:
        done: list[str] = []
        report = RunReport(command=self.command, run_id=None, outcome="nothing_to_do")
        report.recovered = recovered
        self.recorder.describe_run(planned=plan, target=target, accepted_drift=self._accepted_drift)
        try:
            if plan and self.command == "migrate":
                self._upgrade(plan, step, done)
            else:
                for version in plan:
                    step(version, self.state.record(version).attempts + 1)
                    done.append(version)
        except KeyboardInterrupt as e:  # SIGINT or SIGTERM (core/runtime/pytimeout.ending_runs)
            raise self._interrupted(e, done) from e
        except errors.FlywallError as e:  # e.g. a module that raises when loaded, too
            if self.command == "migrate":
                # The upgrade began in an interrupted run whose plan this run completes:
                # undo all of it, and fall back to the backup taken before all of it.
                self._backup_id = self._inherited_backup or self._backup_id
                report.undone = self._auto_rollback([*self._inherited, *done])
            self.recorder.finish("failed", done, str(e))
            report.outcome, report.error = "failed", str(e)
            report.done, report.run_id = done, self.run_id
            raise
        if self.recorder.started:
            window = self.ws.settings.confirm_within
            confirm_by = (
                time.time_ns() + int(window * 1e9)
                if window and done and self.command == "migrate"
                else None
            )
            self.recorder.finish("completed", done, confirm_by_ns=confirm_by)
            report.run_id, report.confirm_by = self.run_id, iso_seconds(confirm_by)
        if plan:
            report.outcome = "completed"
            self._prune_backups()
        report.done = done
        return report

    def _interrupted(self, e: KeyboardInterrupt, done: list[str]) -> errors.RunInterrupted:
        """End the run as failed (interrupted): RunFinished journaled, exit 130 or 143.

        What it applied before the signal stays applied; the step under way was undone.
        """
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        message = f"run {self.run_id} interrupted by {name}"
        # written even when nothing else was: status must show this run as the last one
        self.recorder.finish("failed", done, message, always=True)
        n = len(done)
        kept = f"; the {n} migration{'s' * (n != 1)} it applied before stay applied" if n else ""
        return errors.RunInterrupted(f"{message}: the migration under way was undone{kept}", signum)

    def _upgrade(self, plan: list[str], step: Callable[[str, int], None], done: list[str]) -> None:
        """A migrate run: pre-flight, validate_before, backup, the strategy, validate_after.

        The backup and validate_before run beside the first step when it qualifies
        (`core/runtime/overlap.py`), else before it.
        """
        settings = self.ws.settings
        self.preflight(plan)
        applied = [r.version for r in self.state.in_state(State.APPLIED)]
        # the `custom` order is the vendor's code: it runs after the backup, as it always did
        beside = settings.strategy == "incremental" and self._first_step_beside(plan[0], applied)
        if beside:
            done.append(plan[0])
        else:
            check = (
                (lambda: self._validate("before", applied)) if settings.validate_before else None
            )
            if settings.backup_before:
                self.backup_before_run(alongside=check)  # checks the locked state.db as it copies
            elif check is not None:
                check()
        if settings.strategy == "full":
            self._run_full(plan, done)
        else:
            order = self._ordered(plan)
            for version in order[1:] if beside else order:
                step(version, self.state.record(version).attempts + 1)
                done.append(version)
        if settings.validate_after:
            self._validate("after", done)

    def _first_step_beside(self, version: str, applied: list[str]) -> bool:
        """Run `version` up beside the run's backup and validate_before, if it qualifies.

        See overlap.py. The migrations' own verifies (vendor code) run first, here, on the
        run's connection; when one fails, False, and the sequential order reports it.
        """
        from flywall.core.runtime import overlap
        from flywall.core.services import validate

        settings = self.ws.settings
        m = self.ws.migration(version)
        db = self.existing_database()
        wanted = settings.backup_before or settings.validate_before
        if not wanted or m is None or db is None or not overlap.eligible(m, db):
            return False
        verified: dict[str, str] = {}
        if settings.validate_before:
            verified = validate.verify_migrations(self.ws, applied, db)
            if not all(validate.passed(result) for result in verified.values()):
                return False
        self._step_beside(m, verified if settings.validate_before else None)
        return True

    def _step_beside(self, m: Migration, verified: dict[str, str] | None) -> None:
        """The run's first step, up, its SQL running while the backup is copied and checked.

        `verified` (validate_before on): the verifies' results, joined to the data checks
        the backup's thread makes on a connection of its own.
        """
        from flywall.core.runtime import overlap

        db = self.database()
        beside = overlap.Beside(
            lambda: self._safety_net_beside(beside, verified),
            threaded=self.ws.sqlite.vfs is None,
            on_failure=db.db.interrupt,
        )
        attempt = self.state.record(m.version).attempts + 1
        started = self._started(m, "up", attempt, db.fingerprint())
        sources = [(m.checksum, m.source)]

        def ready() -> None:
            crashpoint("beside-backup-step-done")
            self._record_beside(beside)
            self.recorder.append([(m.version, started)], sources=sources)
            beside.journaled = True

        t0 = time.monotonic_ns()
        try:
            with db.transaction(m.component, ready=ready):
                beside.start()
                try:
                    fingerprint = self._in_database(m, "up", started, within=True)
                except BaseException:
                    beside.outcome()  # settled while the write lock is still this run's
                    raise
        except BaseException as e:
            if not beside.journaled:
                if beside.recorded or not beside.started:  # the backup or a check failed
                    raise
                self._record_beside(beside)  # the step failed: journaled after the backup
                self.recorder.append([(m.version, started)], sources=sources)
            self._failed(m.version, "up", e, t0)
            raise
        took = time.monotonic_ns() - t0
        self.recorder.defer(
            m.version,
            ev.MigrationApplied(
                duration_ns=took, fingerprint_after=fingerprint, schema_version=m.schema_version
            ),
        )

    def _safety_net_beside(
        self, beside: Beside, verified: dict[str, str] | None
    ) -> Manifest | None:
        """The backup (with validate_before alongside its copy), or validate_before alone.

        Runs in the backup's thread; the checks are kept for the journal.
        """

        def check() -> None:
            from flywall.core.services import validate

            assert verified is not None  # only called with validate_before on
            beside.checks = {**self._data_checks_beside(), **verified}
            if not all(validate.passed(result) for result in beside.checks.values()):
                raise errors.ValidationFailed("validate_before failed")  # worded when recorded

        if self.ws.settings.backup_before:
            return self._run_backup(check if verified is not None else None, held=True)
        check()
        return None

    def _record_beside(self, beside: Beside) -> None:
        """Journal (deferred) what the backup's thread did; raise what failed there."""
        beside.recorded = True
        outcome = beside.outcome()
        if beside.checks is not None:
            self._record_validation("before", beside.checks)  # raises for a failed check
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            self._backup_id = outcome.backup_id
            self.recorder.defer("", self._backup_created(outcome))

    def _data_checks_beside(self) -> dict[str, str]:
        """validate_before's data checks on a connection of their own (the run's is busy)."""
        from flywall.core.services import validate

        options = self.ws.sqlite
        db = DatabaseTarget(
            self.ws.paths.state_db, self.ws.settings.version_table, vfs=options.vfs, create=False
        )
        try:
            return validate.target_checks(
                self.state, db, quick=True, accepted_drift=self._accepted_drift
            )
        finally:
            db.close()

    # -- strategies -----------------------------------------------------------------------

    def _ordered(self, plan: list[str]) -> list[str]:
        """`custom` strategy: the vendor's `_strategy.py` (in the migrations directory) orders.

        Its `order(plan, migrations)` gets the planned versions and the Migration of each and
        returns the same versions in the order to run; every dependency must stay first.

        :raises GraphError: the order is not a permutation of the plan or breaks a dependency.
        :raises DiscoveryError: the file does not load, has no `order`, or `order` raised.
        """
        if self.ws.settings.strategy != "custom":
            return plan
        path = self.ws.paths.migrations_dir / "_strategy.py"
        if not path.exists():
            raise errors.UsageError(
                f'strategy = "custom" needs {path} with order(plan, migrations)'
            )
        namespace: dict[str, Any] = {}
        migrations = {v: m for v in plan if (m := self.ws.migration(v)) is not None}
        try:
            code = compile(path.read_bytes(), str(path), "exec")
            exec(code, namespace)  # noqa: S102 - vendor code, trusted like a migration
            order = list(namespace["order"](list(plan), migrations))
        except (Exception, SystemExit) as e:  # the vendor's sys.exit() too: not ours to end
            if isinstance(e, KeyError) and "order" not in namespace:
                raise errors.DiscoveryError(str(path), "has no order(plan, migrations)") from e
            raise errors.DiscoveryError(str(path), f"failed: {type(e).__name__}: {e}") from e
        if sorted(order) != sorted(plan):
            raise errors.GraphError(f"{path}: order() must return the planned versions, once each")
        seen: set[str] = set()
        for version in order:
            late = [d for d in migrations[version].depends_on if d in plan and d not in seen]
            if late:
                raise errors.GraphError(f"{path}: order() runs {version} before {', '.join(late)}")
            seen.add(version)
        return order

    def _run_full(self, plan: list[str], done: list[str]) -> None:
        """`full` strategy: every database/state migration in one transaction, files after.

        All their MigrationStarted events are durable before the transaction begins; a
        failure undoes all of them (each journaled as failed), and recovery decides all of
        them from the same marker evidence: together or not at all.
        """
        pytimeout.checkpoint()
        migrations = [self.ws.migration(v) for v in plan]
        in_db = [m for m in migrations if m is not None and registry.marked(m.component)]
        in_files = [m for m in migrations if m is not None and not registry.marked(m.component)]
        if in_db:
            db = self.database()
            attempts = {m.version: self.state.record(m.version).attempts + 1 for m in in_db}
            before = db.fingerprint()  # one schema before all of them
            self.recorder.append(
                [(m.version, self._started(m, "up", attempts[m.version], before)) for m in in_db],
                sources=[(m.checksum, m.source) for m in in_db],
            )
            t0 = time.monotonic_ns()
            current = in_db[0]
            limit = self.ws.settings.timeout
            self._watchdog.arm(db.db, limit)
            try:
                with pytimeout.limit(limit), db.transaction("database"):
                    for current in in_db:
                        ctx = self._context(current, "up", db.db)
                        step = self._step_of(current, "up", current.checksum, ctx, atomic=True)
                        self._in_state_db(current.component).apply_within(
                            step, pytimeout.vendor(_change(current, "up", ctx)), fingerprint=False
                        )
                    # They commit together, so each one's schema after it is the schema
                    # this transaction commits: fingerprinted once, here, not per migration.
                    fingerprint = db.fingerprint()
            except BaseException as e:
                timed_out = isinstance(e, (apsw.InterruptError, pytimeout.PythonTimeout))
                failure = _timed_out(current.version, limit, e) if timed_out else e
                for m in in_db:
                    if m is not current:
                        undone = errors.MigrationFailed(
                            m.version, "up", "RolledBack", f"undone with {current.version}"
                        )
                        self._failed(m.version, "up", undone, t0)
                self._failed(current.version, "up", failure, t0)
                if timed_out:
                    raise failure from e
                raise
            finally:
                self._watchdog.disarm()
            took = time.monotonic_ns() - t0
            for m in in_db:
                self.recorder.defer(
                    m.version,
                    ev.MigrationApplied(
                        duration_ns=took,
                        fingerprint_after=fingerprint,
                        schema_version=m.schema_version,
                    ),
                )
                done.append(m.version)
        for m in in_files:
            self._step(m, "up", self.state.record(m.version).attempts + 1)
            done.append(m.version)

    # -- the safety net -----------------------------------------------------------------

    def preflight(self, plan: list[str] | tuple[str, ...] = ()) -> None:
        """Refuse to start without room for the backup and a table rebuild, or write access.

        Each file target a migration of `plan` touches is parsed too, so a malformed
        api.json or flywall.hcl stops the run before anything is applied, not at the
        migration that reads it after others changed the box.

        :raises ValidationFailed: naming the path and what is missing or malformed.
        """
        self._preflight_documents(plan)
        self._preflight_modules(plan)
        paths = self.ws.paths
        db_size = paths.state_db.stat().st_size if paths.state_db.exists() else 0
        files = sum(p.stat().st_size for p in (paths.config, paths.api_document) if p.exists())
        needs = [(paths.state_db.parent, db_size + (1 << 20))]  # the largest rebuild: a copy
        if self.ws.settings.backup_before:
            needs.append((_existing_parent(paths.backups), db_size + files + (1 << 20)))
        for where, size in needs:
            fs = os.statvfs(_existing_parent(where))  # what shutil.disk_usage reads
            free = fs.f_bavail * fs.f_frsize
            if free < size:
                raise errors.ValidationFailed(
                    f"pre-flight: {where} has {free} bytes free, the run needs {size}; "
                    "nothing was changed"
                )
        for target in (paths.state_db, paths.config, paths.api_document):
            folder = _existing_parent(target.parent)
            if target.exists() and not os.access(target, os.W_OK):
                raise errors.ValidationFailed(f"pre-flight: {target} is not writable")
            if not os.access(folder, os.W_OK):
                raise errors.ValidationFailed(f"pre-flight: {folder} is not writable")

    def _preflight_modules(self, plan: list[str] | tuple[str, ...]) -> None:
        """Load each Python migration of `plan` once: a body raising at import stops the run.

        Discovery only reads a file's syntax tree, so this is where such a file shows,
        before anything is applied rather than at its turn after others changed the box.

        :raises ValidationFailed: naming the file and what its body raised.
        """
        from flywall.core.scripts.discovery import load_module

        for version in plan:
            m = self.ws.migration(version)
            if m is None or m.kind != "python":
                continue
            try:
                load_module(m)
            except errors.DiscoveryError as e:
                raise errors.ValidationFailed(f"pre-flight: {e}; nothing was changed") from e

    def _preflight_documents(self, plan: list[str] | tuple[str, ...]) -> None:
        """Open flywall.hcl and api.json as their migrations will, if the plan touches them.

        :raises ValidationFailed: the file does not parse; the message names file and line.
        """
        from flywall.core.runtime import fileio

        touched = {m.component for v in plan if (m := self.ws.migration(v)) is not None}
        documents = [c for c in registry.TARGETS if not registry.marked(c)]  # config, api
        for component in documents:
            if component not in touched:
                continue
            target = registry.file_target(component, self.ws.file_targets())
            try:
                target.parse(fileio.read(target.path))
            except (errors.ConfigParseError, msgspec.DecodeError) as e:
                raise errors.ValidationFailed(f"pre-flight: {e}; nothing was changed") from e
            except UnicodeDecodeError as e:
                raise errors.ValidationFailed(
                    f"pre-flight: {target.path}: not UTF-8 at byte {e.start}; nothing was changed"
                ) from e

    def _validate(self, phase: str, versions: list[str]) -> None:
        """validate_before / validate_after: journal the checks; stop (and undo) on a failure.

        :raises ValidationFailed: naming the failed checks.
        """
        from flywall.core.services import validate

        db = self.existing_database()
        # Drift the operator accepted for this run (journaled in its RunStarted, findings
        # and fingerprints) is no finding before or after it; any other drift is.
        checks = validate.target_checks(
            self.state, db, quick=True, accepted_drift=self._accepted_drift
        )
        checks.update(validate.verify_migrations(self.ws, versions, db))
        self._record_validation(phase, checks)

    def _record_validation(self, phase: str, checks: dict[str, str]) -> None:
        """Journal validate_<phase>'s checks (deferred); raise when one failed.

        :raises ValidationFailed: naming the failed checks.
        """
        from flywall.core.services import validate

        ok = all(validate.passed(result) for result in checks.values())
        # Recovery never needs it to explain a side effect: it shares the next write (the
        # first MigrationStarted, or RunFinished, also after a failure) instead of costing
        # a durable transaction of its own.
        self.recorder.defer(
            "", ev.ValidationPerformed(checks=checks, ok=ok, phase=f"validate_{phase}")
        )
        if not ok:
            failed = "; ".join(f"{k}: {v}" for k, v in checks.items() if not validate.passed(v))
            raise errors.ValidationFailed(f"validate_{phase} failed: {failed}")

    def backup_before_run(self, alongside: Callable[[], None] | None = None) -> None:
        """Back up every target into backup_location/<run id>/ before the first change.

        `alongside` (validate_before) runs during the copy: see `backup.create`.

        :raises BackupFailed: the run stops before anything changed.
        """
        manifest = self._run_backup(alongside)
        self._backup_id = manifest.backup_id
        self.recorder.defer("", self._backup_created(manifest))

    def _run_backup(self, alongside: Callable[[], None] | None, *, held: bool = False) -> Manifest:
        """Back up every target, under the run's id; `held`: see `backup.create`."""
        from flywall.core.services import backup

        return backup.create(
            self.ws,
            self.run_id,
            journal_seq=self.state.seq,
            applied=[r.version for r in self.state.in_state(State.APPLIED)],
            reason=f"before {self.command} run {self.run_id}",
            alongside=alongside,
            held=held,
        )

    def take_backup(self, backup_id: str, reason: str) -> Manifest:
        """Back up every target now, outside any migration, and journal it at once.

        Used for the safety backup of a restore and by `backup create`. The event follows
        the backup (a backup changes no target: a crash before the event leaves a complete,
        unjournaled backup or a partial one that recovery removes, never a lie).

        :raises BackupFailed: nothing was changed.
        """
        from flywall.core.services import backup

        manifest = backup.create(
            self.ws,
            backup_id,
            journal_seq=self.state.seq,
            applied=[r.version for r in self.state.in_state(State.APPLIED)],
            reason=reason,
        )
        self.recorder.append([("", self._backup_created(manifest))])
        return manifest

    def _backup_created(self, manifest: Manifest) -> ev.BackupCreated:
        return ev.BackupCreated(
            backup_id=manifest.backup_id,
            location=str(self.ws.paths.backups / manifest.backup_id),
            items=[item.name for item in manifest.items],
            size=manifest.size,
        )

    def _auto_rollback(self, done: list[str]) -> list[str]:
        """Undo what this run applied, newest first: by `down`, else by the run's backup.

        Bounded by `max_rollback_attempts` and `rollback_timeout` (settings). Returns the
        versions undone; what could not be undone stays applied and is named in the log.
        """
        if not self.ws.settings.auto_rollback:
            return []
        return self._undo(done)

    def _undo(self, done: list[str]) -> list[str]:
        """Undo `done` newest first by down, falling back to `self._backup_id`'s restore."""
        settings = self.ws.settings
        if not done:
            return []
        deadline = time.monotonic() + settings.rollback_timeout
        undone: list[str] = []
        for version in reversed(done):
            if time.monotonic() > deadline:
                break
            m = self.source_of(version)
            if not m.has_down or not self._try_down(m, settings.max_rollback_attempts, deadline):
                break
            undone.append(version)
        left = [v for v in reversed(done) if v not in undone]
        if left and self._backup_id is not None:
            self.restore_backup(self._backup_id)
            undone += left
        return undone

    def _try_down(self, m: Migration, attempts: int, deadline: float) -> bool:
        for _ in range(max(attempts, 1)):
            try:
                self._down(m)
            except errors.FlywallError:
                if time.monotonic() > deadline:
                    return False
                continue
            return True
        return False

    def restore_backup(self, backup_id: str, *, safety: bool = False) -> list[str]:
        """Restore a backup; journal every migration it rolls back (`via backup`).

        Write-ahead like any step: each affected migration's MigrationStarted (direction
        down, backup_id) is durable before a file changes, so recovery can finish an
        interrupted restore by doing it again.

        :raises ValidationFailed: a backup file does not match its manifest.
        :raises UsageError: the backup holds migrations that are not applied now.
        """
        from flywall.core.services import backup

        manifest = backup.read_manifest(self.ws, backup_id)
        problems = backup.verify(self.ws, manifest)
        if problems:
            raise errors.ValidationFailed(f"backup {backup_id}: " + "; ".join(problems))
        applied = {r.version: r for r in self.state.in_state(State.APPLIED)}
        missing = sorted(set(manifest.applied) - set(applied))
        if missing:
            raise errors.UsageError(
                f"backup {backup_id} holds migrations not applied now ({', '.join(missing)}); "
                "restoring it would make the targets disagree with the journal"
            )
        if safety:
            self._safety_backup(backup_id)
        undo = sorted(set(applied) - set(manifest.applied), key=lambda v: -applied[v].applied_seq)
        self.recorder.append([(v, self._restore_started(applied[v], backup_id)) for v in undo])
        backup.restore_items(self.ws, manifest)
        db = self.existing_database()
        fingerprint = db.fingerprint() if db is not None else None
        restored = ev.BackupRestored(
            backup_id=backup_id, actor=self.actor, fingerprint_after=fingerprint
        )
        self.recorder.append(
            [(v, ev.MigrationRolledBack(via="backup")) for v in undo] + [("", restored)]
        )
        return undo

    def _restore_started(self, record: MigrationRecord, backup_id: str) -> ev.MigrationStarted:
        return ev.MigrationStarted(
            direction="down",
            component=record.component,
            checksum=record.checksum,
            attempt=record.attempts,
            slug=record.slug,
            description=record.description,
            schema_version=record.schema_version,
            actor=self.actor,
            file=record.file,
            backup_id=backup_id,
        )

    def _safety_backup(self, backup_id: str) -> None:
        self.take_backup(f"{self.run_id}-safety", f"safety backup before restoring {backup_id}")

    def _prune_backups(self) -> None:
        """Apply backup_retention: never the newest backup, never one still needed."""
        if not _may_prune(self.ws.paths.backups):
            return
        from flywall.core.services import backup

        keep_after = time.time_ns() - int(self.ws.settings.backup_retention * 1e9)
        backups = backup.list_backups(self.ws)
        needed = {run.backup_id for run in self.state.unconfirmed.values()}
        for manifest in backups[:-1]:
            if manifest.created_ns < keep_after and manifest.backup_id not in needed:
                self.prune(manifest.backup_id, "retention")

    def prune(self, backup_id: str, reason: str) -> None:
        """Journal, then remove, one backup."""
        from flywall.core.services import backup

        self.recorder.append([("", ev.BackupPruned(backup_id=backup_id, reason=reason))])
        backup.remove(self.ws, backup_id)

    def _up(self, m: Migration, attempt: int) -> None:
        self._step(m, "up", attempt)

    def _down(self, m: Migration) -> None:
        self._step(m, "down", self.state.record(m.version).attempts)

    def _started(
        self, m: Migration, direction: str, attempt: int, before: str | None
    ) -> ev.MigrationStarted:
        """The write-ahead event of one step (up from the file, down as it was applied).

        `before` is the schema fingerprint now (None outside the database).
        """
        record = self.state.record(m.version)
        up = direction == "up"
        return ev.MigrationStarted(
            direction=direction,  # type: ignore[arg-type]
            component=m.component if up else record.component,
            checksum=m.checksum if up else record.checksum,
            attempt=attempt,
            slug=m.slug,
            description=m.description,
            schema_version=m.schema_version if up else record.schema_version,
            fingerprint_before=before,
            actor=self.actor,
            file=m.path.rsplit("/", 1)[-1].rsplit("#", 1)[-1],
        )

    def _step(self, m: Migration, direction: str, attempt: int) -> None:
        """Run one migration in one direction: write-ahead, apply, then record the outcome."""
        pytimeout.checkpoint()  # a signal that came in the engine's own code stops it here
        record = self.state.record(m.version)
        component = m.component if direction == "up" else record.component
        in_db = registry.marked(component)
        before = self.database().fingerprint() if in_db else None
        started = self._started(m, direction, attempt, before)
        sources = [(m.checksum, m.source)] if direction == "up" else []
        self.recorder.append([(m.version, started)], sources=sources)
        t0 = time.monotonic_ns()
        try:
            if in_db:
                fingerprint = self._in_database(m, direction, started)
            else:
                fingerprint = None
                self._in_file(m, direction)
        except BaseException as e:
            self._failed(m.version, direction, e, t0)
            raise
        took = time.monotonic_ns() - t0
        outcome: ev.Event = (
            ev.MigrationApplied(
                duration_ns=took, fingerprint_after=fingerprint, schema_version=m.schema_version
            )
            if direction == "up"
            else ev.MigrationRolledBack(via="down", duration_ns=took, fingerprint_after=fingerprint)
        )
        self.recorder.defer(m.version, outcome)

    def target(self, component: str) -> Target:
        """The target `component` names, on this run's state.db connection (opened lazily).

        Its `apply` is what a step runs; its `marked` tells a step in state.db's
        transaction (watched by the SQLite watchdog) from a journaled file write.
        """
        marked = registry.marked(component)
        return registry.target_for(
            component,
            self.ws.file_targets(),
            self.database() if marked else None,
            state_db=self.ws.paths.state_db,
            vfs=self.ws.sqlite.vfs,
        )

    def _in_state_db(self, component: str) -> SchemaTarget | RecordsTarget:
        target = self.target(component)
        assert isinstance(target, (SchemaTarget, RecordsTarget))  # `marked` components
        return target

    def _step_of(
        self,
        m: Migration,
        direction: str,
        checksum: str,
        ctx: MigrationContext,
        *,
        previous: tuple[str, str] | None = None,
        atomic: bool = False,
        intend: Callable[[bytes | None, bytes], None] | None = None,
    ) -> Step:
        """What a target needs of one step; a batched `state` step journals each batch."""

        def on_batch(last_key: str, rows: int, total: int) -> None:
            batch = ev.BatchCommitted(last_key=last_key, rows=rows, total_rows=total)
            self.recorder.append([(m.version, batch)])

        return Step(
            version=m.version,
            direction=direction,
            checksum=checksum,
            run_id=self.run_id,
            schema_version=m.schema_version,
            previous=previous,
            on_batch=on_batch,
            progress=ctx.progress,
            atomic=atomic,
            **({"intend": intend} if intend is not None else {}),
        )

    def _in_database(
        self, m: Migration, direction: str, started: ev.MigrationStarted, *, within: bool = False
    ) -> str | None:
        """Run the migration inside the target's transaction, with its marker.

        `within`: inside a transaction the caller holds (`_step_beside`).
        """
        db = self.database()
        ctx = self._context(m, direction, db.db)
        previous = None if direction == "up" else self._previous(started.component, m.version)
        step = self._step_of(m, direction, started.checksum, ctx, previous=previous)
        target = self._in_state_db(started.component)
        apply = target.apply_within if within else target.apply
        limit = self._limit(direction)
        self._watchdog.arm(db.db, limit)
        try:
            with pytimeout.limit(limit):
                return apply(step, pytimeout.vendor(_change(m, direction, ctx)))
        except (apsw.InterruptError, pytimeout.PythonTimeout) as e:
            raise _timed_out(m.version, limit, e) from e
        finally:
            self._watchdog.disarm()

    def _limit(self, direction: str) -> float:
        """The step's timeout: `timeout` for an up, `rollback_timeout` for a down."""
        settings = self.ws.settings
        return settings.timeout if direction == "up" else settings.rollback_timeout

    def _in_file(self, m: Migration, direction: str) -> None:
        """Edit the document in memory; journal the intent; then replace the file."""
        from flywall.core.runtime import fileio
        from flywall.core.targets.files import FileTarget, digest

        target = self.target(m.component)
        assert isinstance(target, FileTarget)  # not `marked`
        before = fileio.read(target.path)
        ctx = self._context(m, direction, None)
        if direction == "down" and self.state.record(m.version).unchanged:
            # Rolling back undoes what up did, and up wrote nothing: a down run now could
            # only rewrite shapes up left alone (a config already in the new spelling).
            ctx.log("up left the file as it was: nothing to undo")
            return
        after = self._exact_undo(m.version, before) if direction == "down" else None
        if after is not None:
            ctx.log("file unchanged since up: restored its exact bytes from before up")
        else:
            document = target.parse(before)
            limit = self._limit(direction)
            try:
                with pytimeout.limit(limit):
                    pytimeout.vendor(_function(m, direction))(ctx, document)
            except pytimeout.PythonTimeout as e:  # nothing written yet: the file is untouched
                raise _timed_out(m.version, limit, e) from e
            after = target.render(document, before)

        def intend(before: bytes | None, after: bytes) -> None:
            """Write-ahead: the firmware's check, then the durable WriteIntent."""
            self._check_config(m, after)
            intent = ev.WriteIntent(
                direction=direction,  # type: ignore[arg-type]
                path=str(target.path),
                digest_before=digest(before),
                digest_after=digest(after) or "",
            )
            stored = [(intent.digest_after, after)]
            if before is not None and intent.digest_before is not None:
                stored.append((intent.digest_before, before))
            self.recorder.append([(m.version, intent)], sources=stored)

        target.write(self._step_of(m, direction, m.checksum, ctx, intend=intend), before, after)

    def _check_config(self, m: Migration, after: bytes) -> None:
        """Ask the firmware's validator (`check_command`) about a migrated config first.

        :raises MigrationFailed: it refused; its output is the error; flywall.hcl untouched.
        """
        command = self.ws.settings.check_command
        if m.component != "config" or command is None:
            return
        from flywall.core.appliance import daemon

        result = daemon.check_config(command, after)
        if not result.ok:
            raise errors.MigrationFailed(
                m.version,
                "check",
                "ConfigRefused",
                f"check_command refused the migrated config (exit {result.exit_code}): "
                f"{result.output or 'no output'}; flywall.hcl was left as it was",
            )

    def _exact_undo(self, version: str, current: bytes | None) -> bytes | None:
        """Return the file's bytes from before `up`, if nobody changed it since up wrote it.

        Then a down gives back the original file to the byte (comments, alignment and all)
        instead of rebuilding it structurally; after an operator's edit, `down` runs.
        """
        from flywall.core.targets.files import digest

        written = self.state.record(version).written
        if (
            written is None
            or written.digest_before is None
            or digest(current) != written.digest_after
        ):
            return None
        return self.journal.source(written.digest_before)

    def _failed(self, version: str, direction: str, e: BaseException, t0: int) -> None:
        """Journal the failure; turn a vendor's exception into MigrationFailed.

        A vendor's `sys.exit()` is the migration failing too, not the process being
        interrupted: left alone it would end the run with the vendor's exit code (0 or 3
        read as success or busy) and no RunFinished.
        """
        vendor = isinstance(e, (Exception, SystemExit))
        phase = direction if vendor else "interrupted"
        error_type, message = type(e).__name__, str(e).splitlines()[0] if str(e) else ""
        if isinstance(e, SystemExit):
            message = f"the migration called sys.exit({e.code!r})"
        if isinstance(e, KeyboardInterrupt):
            signum = getattr(e, "signum", signal.SIGINT)
            error_type, message = "Interrupted", f"{signal.Signals(signum).name}; undone"
        if isinstance(e, errors.MigrationFailed):  # already classified (e.g. a timeout)
            phase, error_type, message = e.phase, e.error_type, e.detail
        failed = ev.MigrationFailed(
            direction=direction,  # type: ignore[arg-type]
            phase=phase,
            error_type=error_type,
            message=message,
            duration_ns=time.monotonic_ns() - t0,
        )
        self.recorder.append([(version, failed)])
        if vendor and not isinstance(e, errors.FlywallError):
            raise errors.MigrationFailed(version, phase, failed.error_type, failed.message) from e

    def _context(
        self, m: Migration, direction: str, db: apsw.Connection | None
    ) -> MigrationContext:
        def log(message: str, level: str) -> None:
            self.recorder.defer(m.version, ev.MigrationLog(message=message, level=level))

        def progress(done: int, total: int) -> None:
            if self._on_progress is not None:
                self._on_progress(m.version, done, total)

        return MigrationContext(m.version, direction, self.ws.settings, log, progress, db)

    def _previous(self, component: str, version: str) -> tuple[str, str] | None:
        """Return the (version, checksum) `schema_versions` shows once `version` is down."""
        older = [
            r
            for r in self.state.in_state(State.APPLIED)
            if r.component == component and r.version != version
        ]
        if not older:
            return None
        last = older[-1]
        return (last.schema_version or last.version, last.checksum)

    def _states(self) -> dict[str, State]:
        return {v: r.state for v, r in self.state.migrations.items()}

    def check_checksums(self) -> None:
        """Refuse to run while an applied migration's file differs from what was applied.

        :raises ChecksumMismatch: naming the file and both digests.
        """
        for record in self.state.in_state(State.APPLIED):
            m = self.ws.migration(record.version)
            if m is not None and m.checksum != record.checksum:
                raise errors.ChecksumMismatch(record.version, m.path, record.checksum, m.checksum)

    def check_drift(self, *, accept: bool) -> None:
        """Refuse to run on a target that no longer matches the journal, unless accepted.

        Accepting is journaled: the findings go into this run's RunStarted.

        :raises ValidationFailed: naming every finding.
        """
        from flywall.core.services import drift

        findings = drift.detect(self.state, self.existing_database())
        if findings and not accept:
            raise errors.ValidationFailed(
                "drift: " + "; ".join(findings) + " (inspect with `validate`; "
                "proceed anyway with --accept-drift, which is journaled)"
            )
        self._accepted_drift = findings

    def source_of(self, version: str) -> Migration:
        """Return the migration as it was applied: its file, or the journal's stored copy.

        After a firmware downgrade removed the file, the source kept in the journal (by
        checksum) still lets it roll back.
        """
        from flywall.core.scripts.discovery import from_source

        record = self.state.record(version)
        on_disk = self.ws.migration(version)
        if on_disk is not None and on_disk.checksum == record.checksum:
            return on_disk
        raw = self.journal.source(record.checksum)
        if raw is None:
            raise errors.UsageError(f"migration {version}: no file and no stored source")
        # "JOURNAL#/FILE": from_source takes version and slug from the text after the last
        # "/" (as Path.name); "JOURNAL#FILE" was refused as a bad migration name.
        return from_source(f"{self.journal.path}#/{record.file}", raw)


def _timed_out(version: str, limit: float, e: BaseException) -> errors.MigrationFailed:
    """Say which limit a step hit: SQLite's statement interrupt, or its Python code's alarm."""
    if isinstance(e, apsw.InterruptError):
        what = "SQLite statement interrupted"
    else:
        what = f"its Python code ran past the {limit:g} s timeout"
    return errors.MigrationFailed(
        version, "timeout", "Timeout", f"exceeded {limit:g} s: {what}; its transaction was undone"
    )


def _change(m: Migration, direction: str, ctx: MigrationContext) -> Callable[[Any], None]:
    """Return what does `m`'s `direction` on what its target opens (a connection, records)."""
    if m.kind == "sql":
        sql = m.up_sql if direction == "up" else m.down_sql
        assert sql is not None

        def run_sql(db: apsw.Connection) -> None:
            for _ in db.execute(sql):
                pass

        return run_sql
    function = _function(m, direction)
    return lambda target: function(ctx, target)


def _function(m: Migration, direction: str) -> Callable[..., Any]:
    """Load a Python migration's `up` or `down`."""
    from flywall.core.scripts.discovery import load_module

    function: Callable[..., Any] = getattr(load_module(m), direction)
    return function
