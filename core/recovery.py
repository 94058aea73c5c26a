"""Recovery: decide, from evidence in the targets, what an interrupted migration did.

A migration the journal shows as running (or rolling back) with no live lock holder was
cut off. The journal knows what it was about to do; the target knows whether it happened.
Each decision is one `Recovered` event that names its evidence (DESIGN §7). Deciding only
reads, so `status` can show what recovery will decide without writing anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from flywall.core import events as ev
from flywall.core.crash import crashpoint
from flywall.core.lifecycle import State

if TYPE_CHECKING:
    from flywall.core.projection import MigrationRecord, Projection
    from flywall.core.recorder import Recorder
    from flywall.core.targets.database import DatabaseTarget

IN_FLIGHT = (State.RUNNING, State.ROLLING_BACK)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What recovery decides (or would decide) for one interrupted migration."""

    version: str
    direction: str
    decision: str
    evidence: dict[str, str]
    interrupted_run: str


def decide(record: MigrationRecord, db: DatabaseTarget | None) -> Decision:
    """Read the target's evidence for `record` and decide its fate; writes nothing."""
    direction = record.direction or "up"
    if record.component in ("database", "state"):
        present = db is not None and db.has_marker(record.version)
        evidence = {
            "target": str(db.path) if db is not None else "state.db missing",
            "marker": "present" if present else "absent",
        }
        if db is not None:
            evidence["fingerprint"] = db.fingerprint()
        committed = present if direction == "up" else not present
        if direction == "up":
            decision = "applied" if committed else "failed"
        else:
            decision = "rolled_back" if committed else "applied"
    else:
        evidence = {"reason": f"no evidence rule for component {record.component!r}"}
        decision = "failed" if direction == "up" else "applied"
    return Decision(
        version=record.version,
        direction=direction,
        decision=decision,
        evidence=evidence,
        interrupted_run=record.last_run,
    )


def pending(projection: Projection, db: DatabaseTarget | None) -> list[Decision]:
    """Return the decisions recovery would take now (for `status`; reads only)."""
    return [decide(rec, db) for rec in projection.in_state(*IN_FLIGHT)]


def recover(recorder: Recorder, db: DatabaseTarget | None) -> list[Decision]:
    """Resolve every interrupted migration and close every interrupted run.

    Idempotent: each decision moves its migration out of running, so a second call (or a
    call after a crash half-way through) only does what is left.
    """
    decisions = []
    for record in recorder.projection.in_state(*IN_FLIGHT):
        decision = decide(record, db)
        crashpoint("recovery-before-decision")
        recorder.append(
            [
                (
                    record.version,
                    ev.Recovered(
                        direction=decision.direction,  # type: ignore[arg-type]
                        decision=decision.decision,  # type: ignore[arg-type]
                        evidence=decision.evidence,
                        interrupted_run=decision.interrupted_run,
                    ),
                )
            ]
        )
        crashpoint("recovery-after-decision")
        decisions.append(decision)
    for run_id in list(recorder.projection.open_runs):
        if run_id != recorder.run_id:
            recorder.close_interrupted_run(run_id)
            crashpoint("recovery-after-run-closed")
    return decisions
