"""journal_gen.py - grow a real appliance's journal to E events, the way the engine writes them.

Usage (with the project's venv python):  journal_gen.py ROOT EVENTS [SEED]

ROOT must be a tree where `flywall migration migrate` has applied trivial migrations
(t_i tables; gen.py flywall). The history appended is a long life of that appliance: runs
that roll one migration back and re-apply it, one in ten re-applies failing once first, each
run bracketed by RunStarted/RunFinished, with the engine's own event types and encoders
(flywall.core.model.events), run ids, actors, attempts, and real schema fingerprints of state.db
with and without the table. Events go through `Journal.append` (hash chain, triggers) in
large transactions, are folded into the projection through the lifecycle (an illegal
transition raises here, as in the engine), and the projection snapshot is saved at the end
as the engine saves it after every run. state.db ends as the history says (every migration
applied; markers carry the last run's id), so `status`, `journal verify` and drift agree.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import apsw

from flywall.core.appliance.workspace import Workspace
from flywall.core.model import events as ev
from flywall.core.model import projection as proj
from flywall.core.model.lifecycle import Lifecycle, State
from flywall.core.runtime import snapshot
from flywall.core.runtime.lock import Holder, WriterLock
from flywall.core.targets.database import MARKERS, bookkeeping, schema_fingerprint
from flywall.journal import Entry, Journal

FLUSH = 5000  # events per append transaction


def run_id(at_ns: int, rng: random.Random) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at_ns / 1e9))
    return f"{stamp}-{rng.getrandbits(24):06x}"


class Writer:
    """Appends entries in large transactions and folds them into the projection."""

    def __init__(self, journal, wanted: int, span_days: int = 365) -> None:
        self.journal = journal
        self.projection = proj.Projection()
        self.lifecycle = Lifecycle()
        self.pending: list[tuple[Entry, tuple[tuple[str, bytes], ...]]] = []
        self.written = 0
        self.wanted = wanted
        span = span_days * 86_400 * 10**9
        self.at_ns = time.time_ns() - span - 3_600 * 10**9  # ends an hour ago
        self.step_ns = span // wanted

    def add(self, run: str, version: str, event: ev.Event) -> None:
        self.add_raw(ev.kind_of(event), ev.encode(event), run, version)

    def add_raw(self, kind: str, body: bytes, run: str, version: str) -> None:
        self.at_ns += self.step_ns
        self.pending.append(Entry(kind, body, run, version, self.at_ns))
        self.written += 1

    def flush(self, sources=()) -> None:
        if self.pending:
            for row in self.journal.append(self.pending, sources):
                self.projection.apply(row, self.lifecycle)
            self.pending.clear()

    @property
    def full(self) -> bool:
        return self.written >= self.wanted


def main() -> int:  # noqa: PLR0915 - one straight story, told in order
    root, wanted = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 20231201)
    ws = Workspace.load(root)
    holder = Holder(run_id="journal-gen", command="bench", pid=0, user="bench", since_ns=0)
    with WriterLock(ws.paths.lock, holder):
        # The real first migrate's events and sources, moved to the start of a year of history.
        real = ws.paths.journal.with_name("real-" + ws.paths.journal.name)
        ws.paths.journal.rename(real)
        with Journal.open_existing(real) as old:
            rows = list(old.read())
            sources = old.connection.execute("SELECT digest, body FROM sources").fetchall()
        real.unlink()
        journal = ws.write_journal()
        w = Writer(journal, wanted)
        for row in rows:
            w.add_raw(row.kind, row.body, row.run_id, row.migration)
        w.flush(sources)
        state = w.projection
        applied = [r for r in state.in_state(State.APPLIED) if r.component == "database"]
        if not applied:
            raise SystemExit("journal_gen: no applied migration to cycle (run migrate first)")
        db = apsw.Connection(str(ws.paths.state_db))
        skip = bookkeeping(ws.settings.version_table)
        full_fp = schema_fingerprint(db, skip)
        without: dict[str, str] = {}
        actor = ev.current_actor()
        last_run: dict[str, str] = {}
        # Operators mostly roll back recent migrations: pick among the newest 50.
        recent = applied[-50:]
        attempts = {r.version: r.attempts for r in applied}
        cycles = 0
        while not w.full:
            rec = rng.choice(recent)
            v = rec.version
            if v not in without:
                without[v] = schema_fingerprint(db, (*skip, rec.slug))
            pid = rng.randrange(1000, 60000)
            who = ev.Actor(user=actor.user, uid=actor.uid, host=actor.host, pid=pid)
            # rollback V
            r = run_id(w.at_ns, rng)
            w.add(r, "", ev.RunStarted(command="rollback", actor=who, planned=[v]))
            w.add(r, v, _started("down", rec, full_fp, who, attempts[v]))
            w.add(r, v, ev.MigrationRolledBack(via="down", duration_ns=rng.randrange(3, 9) * 10**5, fingerprint_after=without[v]))  # fmt: skip
            w.add(r, "", ev.RunFinished(outcome="completed", done=[v]))
            # one re-apply in ten fails once first (e.g. the box was busy)
            if cycles % 10 == 9:
                r = run_id(w.at_ns, rng)
                attempts[v] += 1
                w.add(r, "", ev.RunStarted(command="migrate", actor=who, planned=[v]))
                w.add(r, v, _started("up", rec, without[v], who, attempts[v]))
                w.add(r, v, ev.MigrationFailed(direction="up", phase="up", error_type="BusyError", message="database is locked", duration_ns=5_000_000_000))  # fmt: skip
                w.add(r, "", ev.RunFinished(outcome="failed", done=[], error=f"migration {v} failed"))  # fmt: skip
            r = run_id(w.at_ns, rng)
            attempts[v] += 1
            w.add(r, "", ev.RunStarted(command="migrate", actor=who, planned=[v]))
            w.add(r, v, _started("up", rec, without[v], who, attempts[v]))
            w.add(r, v, ev.MigrationApplied(duration_ns=rng.randrange(3, 9) * 10**5, fingerprint_after=full_fp, schema_version=rec.schema_version))  # fmt: skip
            w.add(r, "", ev.RunFinished(outcome="completed", done=[v]))
            last_run[v] = r
            cycles += 1
            if len(w.pending) >= FLUSH:
                w.flush()
        w.flush()
        snapshot.save(journal, w.projection)
        # state.db as the history leaves it: each cycled marker rewritten by its last re-apply
        with db:
            for v, r in last_run.items():
                db.execute(f"UPDATE {MARKERS} SET run_id = ? WHERE version = ?", (r, v))
        db.close()
        journal.close()
    print(f"journal_gen: {w.written} events ({cycles} rollback/re-apply cycles)")
    return 0


def _started(direction, rec, fingerprint, actor, attempt) -> ev.MigrationStarted:
    return ev.MigrationStarted(
        direction=direction,
        component=rec.component,
        checksum=rec.checksum,
        attempt=attempt,
        slug=rec.slug,
        description=rec.description,
        schema_version=rec.schema_version,
        fingerprint_before=fingerprint,
        actor=actor,
        file=rec.file,
    )


if __name__ == "__main__":
    sys.exit(main())
