"""Drift: the targets no longer match what the journal says happened (DESIGN §7).

Drift is reported, never silently "fixed": someone or something changed state.db behind
the journal's back, and the operator must decide (restore, or force a state with a reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywall.core.model.lifecycle import State
from flywall.core.runtime.recovery import IN_FLIGHT
from flywall.core.targets import registry

if TYPE_CHECKING:
    from flywall.core.appliance.workspace import Workspace
    from flywall.core.model.projection import Projection
    from flywall.core.targets.database import DatabaseTarget


LOST_EVENTS = (
    "the journal lacks migrations state.db records as applied: if the journal lost events "
    "(a deleted -wal, a damaged file), get the box back from a backup: flywall migration "
    "journal recover-from-backup BACKUP_ID --yes"
)


def detect(state: Projection, db: DatabaseTarget | None) -> list[str]:
    """Return one line per disagreement between the journal and state.db; [] if none."""
    journal_applied = {
        v: r
        for v, r in state.migrations.items()
        if r.state is State.APPLIED and registry.marked(r.component)
    }
    in_flight = {r.version for r in state.in_state(*IN_FLIGHT)}
    markers = db.markers() if db is not None else {}
    where = str(db.path) if db is not None else "state.db (missing)"
    findings = [
        f"{where}: marker for {v} but the journal does not show it applied"
        for v in sorted(markers)
        if v not in journal_applied and v not in in_flight
    ]
    if findings:  # the journal is behind state.db: perhaps it lost its newest events
        findings.append(LOST_EVENTS)
    for v, rec in sorted(journal_applied.items()):
        if v not in markers:
            findings.append(f"{where}: the journal shows {v} applied but its marker is missing")
        elif markers[v] != rec.checksum:
            findings.append(
                f"{where}: marker of {v} has checksum {markers[v]}, journal {rec.checksum}"
            )
    recorded = state.fingerprints.get("database")
    if db is not None and recorded is not None and not in_flight:
        current = db.fingerprint()
        if current != recorded:
            findings.append(
                f"{where}: schema fingerprint {current[:16]} differs from the journal's "
                f"last recorded {recorded[:16]} (schema changed outside migrations)"
            )
    return findings


def missing_files(ws: Workspace, state: Projection) -> list[str]:
    """Name each applied migration whose file is no longer in any migrations folder.

    Not an error: the journal keeps every applied source, so it can still be rolled back
    (after a firmware downgrade, say). But an operator should see it, not only `checksums`.
    The one rule for `status` (which imports this module for drift anyway, not the
    validate service) and `validate`'s "missing files" warning.
    """
    on_disk = {m.version for m in ws.migrations} | {b.version for b in ws.broken}
    return [
        f"{r.version} ({r.file or r.slug}) is applied but its file is gone; "
        "a rollback uses the journal's copy"
        for r in state.in_state(State.APPLIED)
        if r.version not in on_disk
    ]
