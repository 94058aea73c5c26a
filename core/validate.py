"""Validation: named checks of the journal and the targets, each "ok" or a finding.

`validate` only reads. Each check is a small function returning findings, so the report
says exactly which check failed and where.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from flywall.core import drift, projection
from flywall.core.errors import FlywallError
from flywall.core.lifecycle import Lifecycle, State

if TYPE_CHECKING:
    from flywall.core.workspace import Workspace


class ValidationReport(msgspec.Struct, kw_only=True):
    """Each check's name mapped to "ok" or its findings; `ok` when all passed."""

    checks: dict[str, str]
    ok: bool


def validate(ws: Workspace) -> ValidationReport:
    """Run every check; never raises for a finding (findings are the result)."""
    from flywall.core.targets.database import open_existing
    from flywall.journal import JournalCorrupt

    checks: dict[str, str] = {}
    journal = ws.read_journal()
    state = projection.Projection()
    if journal is not None:
        with journal:
            try:
                journal.verify()
                state = projection.replay(journal.read(), Lifecycle())
                checks["journal chain"] = "ok"
            except (JournalCorrupt, FlywallError) as e:
                checks["journal chain"] = str(e)
    else:
        checks["journal chain"] = "ok"
    try:
        checks["checksums"] = "; ".join(_changed_files(ws, state)) or "ok"
    except FlywallError as e:
        checks["checksums"] = str(e)
    db = open_existing(ws.paths.state_db, ws.settings.version_table)
    try:
        if db is not None:
            integrity = [row[0] for row in db.db.execute("PRAGMA integrity_check")]
            checks["integrity"] = "ok" if integrity == ["ok"] else "; ".join(integrity)
            fk = db.db.execute("PRAGMA foreign_key_check").fetchall()
            checks["foreign keys"] = "ok" if not fk else f"{len(fk)} violation(s), first {fk[0]}"
        checks["drift"] = "; ".join(drift.detect(state, db)) or "ok"
    finally:
        if db is not None:
            db.close()
    return ValidationReport(checks=checks, ok=all(v == "ok" for v in checks.values()))


def _changed_files(ws: Workspace, state: projection.Projection) -> list[str]:
    """Name each applied migration whose file no longer has the checksum it was applied with."""
    on_disk = {m.version: m for m in ws.migrations}
    return [
        f"{m.path}: applied as {r.checksum[:16]}, file is now {m.checksum[:16]}"
        for r in state.in_state(State.APPLIED)
        if (m := on_disk.get(r.version)) is not None and m.checksum != r.checksum
    ]
