"""What the crash tests check after a kill (CRASH-TESTING.md, "Invariants checked").

Shared by the crash-point suite and the random-kill soak: `snapshot` reads everything a
run can leave behind, straight from the files (never through the engine's caches), and
`check_consistent` states the invariants that must hold after any cut.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import blake3
from torture import LONG

from flywall.core import commands
from flywall.core.appliance.workspace import Workspace
from flywall.core.model import projection
from flywall.core.model.lifecycle import Lifecycle, State
from flywall.core.runtime import fileio, recovery
from flywall.core.targets import registry
from flywall.core.targets.database import (
    DatabaseTarget,
    bookkeeping,
    open_existing,
    schema_fingerprint,
)
from flywall.core.targets.files import digest
from flywall.journal import Journal


@dataclass
class Observed:
    """Everything that decides whether two appliances ended in the same state."""

    states: dict[str, str] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)
    fingerprint: str = ""
    data: str = ""
    files: dict[str, str | None] = field(default_factory=dict)


def integrity_ok(path: Path) -> bool:
    """Run PRAGMA integrity_check on an SQLite file, if it exists."""
    if not path.exists():
        return True
    db = apsw.Connection(str(path))
    try:
        return db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


_STORE_ROWS = {
    # Flywall's store (FLYWALL.md §5): what its records say, not when they were written.
    # A bucket migration stamps versions and times and appends change rows (a rollback
    # too: the log only grows), so two correct runs differ there; the change log's own
    # invariants (chain, versions, replay) are checked by tests/core/targets/test_store.py and tests/crash/test_store_engine.py.
    "entries": "SELECT bucket, key, value, expires_at FROM entries ORDER BY bucket, key",
    "changes": None,
    "buckets": "SELECT name FROM buckets ORDER BY name",
}


def data_digest(path: Path) -> str:
    """Blake3 of every user table's rows, in primary-key order (not our bookkeeping).

    Flywall's store is read as its records (`_STORE_ROWS`), its log left to its own checks.
    """
    if not path.exists():
        return ""
    db = apsw.Connection(str(path))
    h = blake3.blake3()
    try:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        for table in tables:
            if table in bookkeeping("schema_versions"):
                continue
            query = _STORE_ROWS.get(table, f'SELECT * FROM "{table}" ORDER BY rowid')
            if query is None:
                continue
            h.update(table.encode())
            for row in db.execute(query):
                h.update(repr(row).encode())
    finally:
        db.close()
    return h.hexdigest()


def observe(root: Path) -> Observed:
    """Read the appliance's final state from the journal (full replay) and state.db."""
    ws = Workspace.load(root)
    journal = Journal.open_existing(ws.paths.journal)
    seen = Observed()
    if journal is not None:
        with journal:
            journal.verify()
            replayed = projection.replay(journal.read(), Lifecycle())
        seen.states = {v: r.state.value for v, r in sorted(replayed.migrations.items())}
    db = open_existing(ws.paths.state_db, ws.settings.version_table)
    if db is not None:
        seen.markers = set(db.markers())
        seen.fingerprint = schema_fingerprint(db.db, bookkeeping(ws.settings.version_table))
        db.close()
    seen.data = data_digest(ws.paths.state_db)
    seen.files = {
        path.name: digest(fileio.read(path)) for path in (ws.paths.config, ws.paths.api_document)
    }
    return seen


_EXPECTED = {
    ("up", "present"): "applied",
    ("up", "absent"): "failed",
    ("down", "present"): "applied",
    ("down", "absent"): "rolled_back",
}


def _expected(d: recovery.Decision) -> str | None:
    """The decision the marker (and, for a half-done batched step, its checkpoint) calls for."""
    half_done = any(k.startswith(f"checkpoint {d.version}:{d.direction} ") for k in d.evidence)
    if half_done and d.evidence["marker"] == ("absent" if d.direction == "up" else "present"):
        return "applied" if d.direction == "up" else "rolled_back"  # finished from the checkpoint
    return _EXPECTED.get((d.direction, d.evidence["marker"]))


def integrity_problems(ws: Workspace) -> list[str]:
    """Name each SQLite file that fails PRAGMA integrity_check."""
    return [
        f"integrity_check failed for {path.name}"
        for path in (ws.paths.journal, ws.paths.state_db)
        if not integrity_ok(path)
    ]


def evidence_problems(
    ws: Workspace, replayed: projection.Projection, db: DatabaseTarget | None
) -> list[str]:
    """Compare the replayed journal with the marker rows of state.db."""
    problems = [
        f"decision {d} disagrees with evidence"
        for d in recovery.pending(replayed, db, ws.file_targets())
        if "marker" in d.evidence and _expected(d) != d.decision
    ]
    applied = {
        v
        for v, r in replayed.migrations.items()
        if r.state is State.APPLIED and registry.marked(r.component)
    }
    markers = set(db.markers()) if db else set()
    if applied - markers:
        problems.append(f"journal says applied but no marker: {sorted(applied - markers)}")
    in_flight = {v for v, r in replayed.migrations.items() if r.state in recovery.IN_FLIGHT}
    if markers - in_flight - applied:
        problems.append(f"marker without applied state: {sorted(markers - in_flight - applied)}")
    return problems


def checkpoint_problems(replayed: projection.Projection, db: DatabaseTarget | None) -> list[str]:
    """A batched step's checkpoint is left only while it runs, or after a failed up.

    Anywhere else its records are in two shapes while the journal names one (issue 13:
    a rollback cut between batches was recovered as "applied").
    """
    problems = []
    for version, direction, table, rows in db.batch_checkpoints() if db else []:
        now = replayed.state_of(version)
        if now in recovery.IN_FLIGHT or (direction == "up" and now is State.FAILED):
            continue
        problems.append(f"{table}: {direction} of {version} stopped at {rows} rows, journal: {now}")
    return problems


def file_problems(ws: Workspace, replayed: projection.Projection) -> list[str]:
    """A file in the middle of a replace holds its before or its after bytes, nothing else."""
    problems = []
    for record in replayed.in_state(*recovery.IN_FLIGHT):
        intent = record.intent
        if intent is None:
            continue
        now = digest(fileio.read(ws.file_targets()[record.component]))
        allowed = {intent.digest_before, intent.digest_after}
        if now not in allowed and now is not None:
            problems.append(f"{intent.path} is {now}: neither before nor after")
    return problems


def check_after_cut(root: Path, *, settled: bool = False) -> list[str]:
    """Return the violated invariants right after a kill, before anything recovers.

    `settled`: after `recover` ran, nothing may be in flight any more.
    """
    ws = Workspace.load(root)
    problems = integrity_problems(ws)
    journal = Journal.open_existing(ws.paths.journal)
    if journal is None:
        return problems
    with journal:
        try:
            journal.verify()
        except Exception as e:
            return [*problems, f"chain: {e}"]
        replayed = projection.replay(journal.read(), Lifecycle())
    db = open_existing(ws.paths.state_db, ws.settings.version_table)
    try:
        problems += evidence_problems(ws, replayed, db)
        problems += checkpoint_problems(replayed, db)
    finally:
        if db is not None:
            db.close()
    problems += file_problems(ws, replayed)
    if settled:
        problems += [f"{r.version} still {r.state}" for r in replayed.in_state(*recovery.IN_FLIGHT)]
    status = commands.status(ws)
    if replayed.in_state(*recovery.IN_FLIGHT) and not status.interrupted:
        problems.append("status shows migrations in flight but no interrupted decision")
    return problems


def check_settled(root: Path, reference: Observed) -> list[str]:
    """Return the violated invariants once a rerun finished, against an uninterrupted run."""
    problems = integrity_problems(Workspace.load(root))
    seen = observe(root)
    problems += [
        f"{name}: {getattr(seen, name)!r} != {getattr(reference, name)!r}"
        for name in ("states", "markers", "fingerprint", "data", "files")
        if getattr(seen, name) != getattr(reference, name)
    ]
    applied = {v for v, s in seen.states.items() if s == "applied"} & reference.markers
    if applied != seen.markers:
        problems.append(f"applied {sorted(applied)} != markers {sorted(seen.markers)}")
    return problems


def killed(result: subprocess.CompletedProcess[str]) -> bool:
    """Tell whether a CLI run died by SIGKILL (as FLYWALL_CRASH_AT does)."""
    return result.returncode == -9


SAMPLES = 6
"""Crash points per scenario in the default run (the first, the last and four spread
between them); FLYWALL_TORTURE=long kills at every one."""
LOW_CHECKPOINT = {"FLYWALL_WAL_AUTOCHECKPOINT": "2"}
"""Checkpoints inside every run: the journal and state.db copy their WAL every two pages."""


def sample(points: list[str], *, every: bool = False) -> list[str]:
    """Every point under FLYWALL_TORTURE=long (or `every`); else SAMPLES spread evenly,
    always the first and the last (a scenario is reached at both its ends and its middle)."""
    if LONG or every or len(points) <= SAMPLES:
        return list(points)
    step = (len(points) - 1) / (SAMPLES - 1)
    return [points[round(i * step)] for i in range(SAMPLES)]


def cuts(points: list[str], *, every: bool = False) -> list[tuple[str, dict[str, str]]]:
    """(point, environment) pairs: every point twice (SQLite's and a low checkpoint
    threshold) under FLYWALL_TORTURE=long; else the `sample` (all of them with `every`),
    alternating the two thresholds."""
    if LONG:
        return [(p, env) for p in points for env in ({}, LOW_CHECKPOINT)]
    chosen = sample(points, every=every)
    return [(p, LOW_CHECKPOINT if i % 2 else {}) for i, p in enumerate(chosen)]
