"""Recovery: decide, from evidence in the targets, what an interrupted migration did.

A migration the journal shows as running (or rolling back) with no live lock holder was
cut off. The journal knows what it was about to do; the target knows whether it happened.
Each decision is one `Recovered` event that names its evidence (DESIGN §7). Deciding only
reads, so `status` can show what recovery will decide without writing anything.

This module is the one home of what an interrupted run leaves: each migration's fate, a
rollback an older release left half done, and what each interrupted `migrate` run leaves
the next run to finish. The engine acts on those decisions (it alone runs a migration's
step or its auto-rollback) and hands recovery data: the recorder, state.db, the workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from flywall.core.model import events as ev
from flywall.core.model.errors import ValidationFailed
from flywall.core.model.lifecycle import State
from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint
from flywall.core.targets import registry

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from flywall.core.appliance.workspace import Workspace
    from flywall.core.model.projection import MigrationRecord, Projection, RunRecord
    from flywall.core.runtime.recorder import Recorder
    from flywall.core.targets.database import DatabaseTarget

IN_FLIGHT = (State.RUNNING, State.ROLLING_BACK)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What recovery decides (or would decide) for one interrupted migration.

    `action` names a side effect recovery must finish first: "roll_forward" (rename the
    temp file that holds the intended content), "rewrite" (the file is missing: write
    the intended content from the journal's sources), or "resume" (a batched state step
    cut between batches: run it on from its checkpoint to the end). Each completes a
    step whose write-ahead event (`WriteIntent`, `MigrationStarted`) is already durable,
    so the journal explains it before it happens.
    """

    version: str
    direction: str
    decision: str
    evidence: dict[str, str]
    interrupted_run: str
    action: str | None = None


def _outcome(direction: str, *, done: bool) -> str:
    """The state a migration lands in: its step happened (`done`) or did not."""
    if direction == "up":
        return "applied" if done else "failed"
    return "rolled_back" if done else "applied"


def decide(
    record: MigrationRecord,
    db: DatabaseTarget | None,
    files: Mapping[str, Path],
    *,
    resume_up: bool = True,
) -> Decision:
    """Read the target's evidence for `record` and decide its fate; writes nothing.

    `files` maps "config" and "api" to where those documents live now (from settings:
    the journaled path is history, and an appliance tree may have moved since).

    A batched state step cut after some batches committed is half done: its records are
    in two shapes. Recovery finishes it from its checkpoint (DESIGN §7: "resume"), so
    the records end in one shape and the journal says which. A `down` is always
    finished: no other end leaves the records and the journal agreeing. An `up` is
    finished unless `resume_up` is off (settings `state { resume_on_crash = false }`);
    it is then failed, its checkpoint kept, and the next `migrate` goes on from it.

    :raises ValidationFailed: a file target holds neither the before nor the after
        content: someone else edited it, and only the operator can say which to keep.
    """
    direction = record.direction or "up"
    if record.restoring is not None:
        return Decision(
            version=record.version,
            direction=direction,
            decision="rolled_back",
            evidence={"backup": record.restoring, "restore": "redone from the backup"},
            interrupted_run=record.last_run,
            action="restore",
        )
    seen = registry.target_for(record.component, files, db).evidence(record)
    done, action = seen.done, seen.action
    if seen.half_done and (direction == "down" or resume_up):
        done, action = True, "resume"
    return Decision(
        version=record.version,
        direction=direction,
        decision=_outcome(direction, done=done),
        evidence=seen.evidence,
        interrupted_run=record.last_run,
        action=action,
    )


def pending(
    projection: Projection,
    db: DatabaseTarget | None,
    files: Mapping[str, Path],
    *,
    resume_up: bool = True,
) -> list[Decision]:
    """Return the decisions recovery would take now (for `status`; reads only)."""
    return [decide(rec, db, files, resume_up=resume_up) for rec in projection.in_state(*IN_FLIGHT)]


def _resume_failed(decision: Decision, error: str) -> Decision:
    """The decision a failed resume leaves: the step failed (up) or did not happen (down)."""
    return msgspec.structs.replace(
        decision,
        decision=_outcome(decision.direction, done=False),
        evidence={**decision.evidence, "resume": f"could not finish it: {error}"},
    )


def _evidence_after(decision: Decision, db: DatabaseTarget | None) -> dict[str, str]:
    """The decision's evidence, plus what recovery did and (after a restore) the schema."""
    evidence = {**decision.evidence, "action": decision.action or "none"}
    if decision.action in ("restore", "resume") and db is not None:
        evidence["fingerprint"] = db.fingerprint()
    return evidence


def _finish_intent(recorder: Recorder, intent: ev.WriteIntent, action: str, target: Path) -> None:
    """Complete a durable WriteIntent: rename its temp file, or rewrite from sources."""
    path = fileio.resolve(target)
    if action == "roll_forward":
        fileio.REAL.rename(fileio.temp_path(path), path)
        fileio.REAL.fsync_dir(path.parent)
    else:
        content = recorder.journal.source(intent.digest_after)
        if content is None:
            raise ValidationFailed(f"{intent.path}: missing, and its content is not stored")
        fileio.replace(path, content)
    crashpoint("recovery-after-file-fix")


def _remove_stale_temps(recorder: Recorder, paths: Iterable[Path]) -> None:
    """Remove temp files no interrupted migration needs any more (DESIGN §7)."""
    if recorder.projection.in_state(*IN_FLIGHT):
        return
    for path in paths:
        if fileio.remove_stale_temp(path):
            crashpoint("recovery-after-temp-removed")


class Resumer(Protocol):
    """The engine, which alone can run a migration's step: recovery asks it to finish one."""

    def resume_step(self, record: MigrationRecord) -> str | None:
        """Run a half-done batched step on from its checkpoint, to its end.

        Returns None, or why it failed (journaled by then, as any step's failure is).
        """
        ...


class CutRollback(NamedTuple):
    """A batched `down` an older release's recovery left half done (see `cut_rollbacks`)."""

    version: str
    table: str
    rows: int


class CarryOn(NamedTuple):
    """What an interrupted `migrate` run leaves the run that recovers it to finish."""

    run_id: str
    applied: list[str]
    """Its migrations applied still (those recovery found applied included)."""
    backup_id: str | None
    undo: bool
    """It had failed, and was cut in its auto-rollback: finish that. Otherwise the
    recovering run completes its plan, and its own undo covers both."""


class Outcome(NamedTuple):
    """What `recover` decided: each migration's fate, and what the runs left to finish."""

    decisions: list[Decision]
    carry_on: list[CarryOn]


def cut_rollbacks(projection: Projection, db: DatabaseTarget | None) -> list[CutRollback]:
    """Find each batched `down` that an older release left half done; writes nothing.

    Before issue 13 was fixed, recovery took a state `down` cut between batches for one
    that never started (its marker was still there): the journal says applied, a `:down`
    checkpoint says the rollback was under way, and the records are in two shapes. The
    engine puts each back in flight (a new durable `MigrationStarted`), and recovery then
    finishes it from its checkpoint. A down that *failed* (journaled as such) is left to
    the operator: its checkpoint stays, `validate` names it, and `rollback` goes on from it.
    """
    if db is None:
        return []
    found: dict[str, CutRollback] = {}  # a step's first table names it, as it did
    for version, direction, table, rows in db.batch_checkpoints():
        record = projection.migrations.get(version)
        if (
            version not in found
            and direction == "down"
            and record is not None
            and record.state is State.APPLIED
            and record.component == "state"
            and record.last_error is None
        ):
            found[version] = CutRollback(version, table, rows)
    return list(found.values())


def recover(
    recorder: Recorder, db: DatabaseTarget | None, ws: Workspace, engine: Resumer
) -> Outcome:
    """Resolve every interrupted migration and run; say what their runs left to finish.

    The interrupted `migrate` runs are read before their runs are closed: one that had
    failed was cut in its auto-rollback, which the engine finishes; any other's plan the
    recovering run completes.
    """
    interrupted = [
        run
        for run in recorder.projection.open_runs.values()
        if run.command == "migrate" and run.run_id != recorder.run_id
    ]
    decisions = resolve_interrupted(recorder, db, ws, engine)
    return Outcome(
        decisions, [_carry_on(run, decisions, recorder.projection) for run in interrupted]
    )


def _carry_on(run: RunRecord, decisions: list[Decision], projection: Projection) -> CarryOn:
    recovered = [
        d.version
        for d in decisions
        if d.interrupted_run == run.run_id and d.direction == "up" and d.decision == "applied"
    ]
    still = [v for v in [*run.applied, *recovered] if projection.state_of(v) is State.APPLIED]
    return CarryOn(run.run_id, still, run.backup_id, undo=bool(run.failed))


def _restore(ws: Workspace, backup_id: str) -> None:
    """Restore backup `backup_id` (idempotent: finishes an interrupted restore)."""
    from flywall.core.services import backup

    backup.restore_items(ws, backup.read_manifest(ws, backup_id))


def resolve_interrupted(
    recorder: Recorder, db: DatabaseTarget | None, ws: Workspace, engine: Resumer
) -> list[Decision]:
    """Resolve every interrupted migration and close every interrupted run.

    The step of recovery that reads evidence and journals decisions; `recover` wraps it
    with what the interrupted runs left to finish, and `Engine.recover` (the `recover`
    command's, and every writer's first step) acts on that: their auto-rollback or plan.

    Idempotent: each decision moves its migration out of running, so a second call (or a
    call after a crash half-way through) only does what is left. A resumed step that is
    cut again is still running, its checkpoint further on.
    """
    files = ws.file_targets()
    resume_up = ws.settings.state.resume_on_crash
    decisions = []
    restored: set[str] = set()
    for record in recorder.projection.in_state(*IN_FLIGHT):
        decision = decide(record, db, files, resume_up=resume_up)
        crashpoint("recovery-before-decision")
        if decision.action == "restore" and record.restoring not in restored:
            _restore(ws, record.restoring or "")  # idempotent: finishes an interrupted restore
            restored.add(record.restoring or "")
        elif decision.action == "resume":
            failed = engine.resume_step(record)
            if failed is not None:  # journaled as the step's failure: no Recovered event
                decisions.append(_resume_failed(decision, failed))
                continue
        elif decision.action is not None and record.intent is not None:
            _finish_intent(recorder, record.intent, decision.action, files[record.component])
        recorder.append(
            [
                (
                    record.version,
                    ev.Recovered(
                        direction=decision.direction,  # type: ignore[arg-type]
                        decision=decision.decision,  # type: ignore[arg-type]
                        evidence=_evidence_after(decision, db),
                        interrupted_run=decision.interrupted_run,
                    ),
                )
            ]
        )
        crashpoint("recovery-after-decision")
        decisions.append(decision)
    _remove_stale_temps(recorder, files.values())
    for run_id in list(recorder.projection.open_runs):
        if run_id != recorder.run_id:
            recorder.close_interrupted_run(run_id)
            crashpoint("recovery-after-run-closed")
    return decisions
