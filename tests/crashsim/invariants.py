"""What must hold after a power cut (CRASH-TESTING.md, "Invariants checked after every cut").

The checker never raises for a broken invariant: it returns one line per violation, so the
same code counts violations in the product's modes (must be none) and in the negative
controls (must be some). It opens everything with the normal VFS, as the appliance does
when the power comes back, and reads state.db and the journal straight from the files.

"Acknowledged" means `Journal.append` returned: the `on_event` hook of the commands API is
called for each stored row only after that, so `AckLog` is exactly the set of events the
product was entitled to rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import msgspec

from flywall.core.model import events as ev
from flywall.core.model import projection
from flywall.core.model.lifecycle import Lifecycle, State
from flywall.core.runtime import snapshot
from flywall.core.targets.database import open_existing
from flywall.journal import Journal, JournalCorrupt

if TYPE_CHECKING:
    from collections.abc import Callable

    from flywall.core.appliance.workspace import Workspace
    from flywall.journal import StoredEvent


@dataclass(frozen=True)
class Acked:
    """One event whose append returned."""

    seq: int
    hash: bytes
    kind: str
    migration: str


@dataclass
class AckLog:
    """An `on_event` hook that remembers every acknowledged event."""

    events: list[Acked] = field(default_factory=list)

    def __call__(self, row: StoredEvent, _event: ev.Event) -> None:
        self.events.append(Acked(row.seq, row.hash, row.kind, row.migration))


@dataclass(frozen=True)
class Observed:
    """The end state that two runs must share to count as the same outcome."""

    fingerprint: str
    markers: dict[str, str]
    versions: dict[str, tuple[str, str]]
    states: dict[str, str]
    data: str = ""
    """blake3 of every user table's rows: no record lost, doubled or left half reshaped."""


def _connect(path: Path) -> apsw.Connection:
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    db.set_busy_timeout(5000)
    return db


def integrity(path: Path) -> str | None:
    """Return None if `path` is absent or passes `PRAGMA integrity_check`, else the problem."""
    if not path.exists():
        return None
    try:
        db = _connect(path)
        try:
            result = db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()
    except apsw.Error as e:
        return f"{path.name}: cannot be opened: {e}"
    return None if result == [("ok",)] else f"{path.name}: integrity_check says {result}"


def target_evidence(path: Path, version_table: str) -> tuple[str, dict[str, str], dict]:
    """Read state.db as it is: (schema fingerprint, markers, schema_versions rows)."""
    target = open_existing(path, version_table)
    if target is None:
        return "", {}, {}
    try:
        versions: dict[str, tuple[str, str]] = {}
        if target.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (version_table,)
        ).fetchall():
            rows = target.db.execute(f"SELECT component, version, checksum FROM {version_table}")
            versions = {c: (v, s) for c, v, s in rows}
        return target.fingerprint(), target.markers(), versions
    finally:
        target.close()


def data_digest(path: Path) -> str:
    """blake3 of every table's rows in rowid order, our own bookkeeping left out."""
    import blake3

    from flywall.core.targets.database import bookkeeping

    if not path.exists():
        return ""
    db = _connect(path)
    digest = blake3.blake3()
    try:
        skip = bookkeeping("schema_versions")
        tables = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        for (table,) in tables:
            if table in skip:
                continue
            digest.update(table.encode())
            for row in db.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                digest.update(repr(row).encode())
    finally:
        db.close()
    return digest.hexdigest()


def half_done_steps(path: Path) -> list[tuple[str, str, int]]:
    """Every batched step's checkpoint row in state.db: (version:direction, table, rows)."""
    if not path.exists():
        return []
    db = _connect(path)
    try:
        return db.execute("SELECT step, tbl, rows FROM flywall_batches").fetchall()
    except apsw.SQLError:  # no batched step ever ran
        return []
    finally:
        db.close()


def journal_state(ws: Workspace) -> tuple[list[StoredEvent], projection.Projection]:
    """Every stored event and the full replay (no snapshot) through the lifecycle."""
    journal = Journal.open_existing(ws.paths.journal, key=ws.device_key())
    if journal is None:
        return [], projection.Projection()
    with journal:
        journal.verify()
        rows = list(journal.read())
        replayed = projection.replay(rows, Lifecycle())
        cached = snapshot.load(journal)
    if msgspec.to_builtins(cached) != msgspec.to_builtins(replayed):
        raise JournalCorrupt(replayed.seq, "the cached snapshot disagrees with a full replay")
    return rows, replayed


def observe(ws: Workspace) -> Observed:
    """The outcome of a run, from the files."""
    _, state = journal_state(ws)
    fingerprint, markers, versions = target_evidence(ws.paths.state_db, ws.settings.version_table)
    states = {v: r.state.value for v, r in sorted(state.migrations.items())}
    return Observed(fingerprint, markers, versions, states, data_digest(ws.paths.state_db))


def check_chain(ws: Workspace, acked: list[Acked]) -> list[str]:
    """The chain verifies, seqs have no gap, and every acknowledged event is there."""
    try:
        rows, _ = journal_state(ws)
    except Exception as e:
        return [f"journal: {type(e).__name__}: {e}"]
    problems = []
    seqs = [r.seq for r in rows]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"journal: seqs are not gap-free from 1: {seqs[:5]}...")
    by_seq = {r.seq: r for r in rows}
    for a in acked:
        row = by_seq.get(a.seq)
        if row is None:
            problems.append(f"acknowledged event #{a.seq} {a.kind} {a.migration} is lost")
        elif row.hash != a.hash:
            problems.append(f"acknowledged event #{a.seq} {a.kind} was replaced by {row.kind}")
    return problems


def check_agreement(ws: Workspace) -> list[str]:
    """What the journal says about each migration agrees with the target's evidence."""
    try:
        _, state = journal_state(ws)
        fingerprint, markers, versions = target_evidence(
            ws.paths.state_db, ws.settings.version_table
        )
    except Exception as e:
        return [f"reading the evidence: {type(e).__name__}: {e}"]
    problems = [
        f"{r.version} is still {r.state.value} after recovery"
        for r in state.in_state(State.RUNNING, State.ROLLING_BACK)
    ]
    if state.open_runs:
        problems.append(f"runs still open after recovery: {sorted(state.open_runs)}")
    applied = [r for r in state.in_state(State.APPLIED) if r.component in ("database", "state")]
    said = {r.version: r.checksum for r in applied}
    problems.extend(
        f"{version}: journal says {state.state_of(version).value} ({said.get(version)}),"
        f" marker row is {markers.get(version, 'absent')}"
        for version in sorted(said.keys() | markers.keys())
        if said.get(version) != markers.get(version)
    )
    newest = {r.component: (r.schema_version or r.version, r.checksum) for r in applied}
    if newest != versions:
        problems.append(f"schema_versions {versions} but the journal says {newest}")
    for step, table, rows in half_done_steps(ws.paths.state_db):
        version, direction = step.rsplit(":", 1)
        now = state.state_of(version)
        if not (direction == "up" and now is State.FAILED):  # a failed up: migrate goes on
            problems.append(
                f"{table}: a batched {direction} of {version} stopped after {rows} rows, "
                f"the journal says {now.value}: records in two shapes"
            )
    recorded = state.fingerprints.get("database")
    if recorded is not None and recorded != fingerprint:
        problems.append(f"schema fingerprint {fingerprint[:12]}, journal says {recorded[:12]}")
    return problems


def check_after_cut(
    normal: Workspace,
    acked: list[Acked],
    redo: Callable[[Workspace], object],
    reference: Observed,
) -> list[str]:
    """Every invariant, in the order the appliance meets them after power returns.

    `normal` opens the interrupted run's files with the product's VFS and settings. `redo`
    runs the interrupted command again to completion; the outcome must equal `reference`,
    the outcome of an uninterrupted run.
    """
    from flywall.core import commands

    paths = normal.paths
    problems = [p for p in (integrity(paths.journal), integrity(paths.state_db)) if p]
    problems += check_chain(normal, acked)
    try:
        commands.recover(normal)
    except Exception as e:
        return [*problems, f"recover: {type(e).__name__}: {e}"]
    problems += [f"after recovery: {p}" for p in check_agreement(normal)]
    try:
        redo(normal)
    except Exception as e:
        return [*problems, f"running again: {type(e).__name__}: {e}"]
    problems += [f"after running again: {p}" for p in check_agreement(normal)]
    try:
        again = observe(normal)
    except Exception as e:
        return [*problems, f"observing: {type(e).__name__}: {e}"]
    if again != reference:
        problems.append(f"running again ends in {again}, an uninterrupted run in {reference}")
    return problems
