"""Power cuts under whole runs of `migrate`, `rollback` and `recover` (CRASH-TESTING.md, 3).

Each scenario runs the command in-process with every SQLite file under the power-cut VFS
(`crashsim.vfs`). A dry run counts its I/O events N; then, for each cut point k in 1..N+1
(N+1: the power goes right after the command returned) and each fate (drop, tear,
reorder), the run is cut at k, the files are left as the platter has them, and the checker
(`crashsim.invariants`) reopens them with the normal VFS and checks every invariant.

The product's modes must show no violation. The negative controls run the same scenarios
and the same checker with a durability setting the product refuses, and must be caught.

By default SAMPLES cut points per fate are taken evenly (each fate on a shifted grid), about
two minutes on two cores; `FLYWALL_TORTURE=long` runs every cut point (over an hour).
`powercut_figures` returns the counts, `summarize` words them; `pytest -s` prints one line
per scenario and the totals, and `PYTHONPATH=tests python tests/crash/test_powercut.py` prints them too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest
from crashsim import vfs
from crashsim.invariants import AckLog, Observed, check_after_cut, observe
from torture import LONG

from flywall.core import commands
from flywall.core.appliance.settings import load_settings
from flywall.core.appliance.workspace import SqliteOptions, Workspace
from flywall.core.model import errors
from flywall.core.services import backup

SAMPLES = 8
"""Cut points per fate and scenario in the default mode (each fate on a shifted grid; each
scenario also runs with a low checkpoint threshold, so every run is sampled twice)."""

CONFIG = """\
# power-cut test appliance
schema_version = "1.0"
"""

SETTINGS = """\
migration {
  include_shipped = false
}
"""

MIGRATIONS = {
    "202401010001_create_zones.sql": """\
        -- Create the zones table.
        -- migrate:up
        CREATE TABLE zones (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        INSERT INTO zones (name) VALUES ('lan'), ('wan'), ('dmz');
        -- migrate:down
        DROP TABLE zones;
        """,
    "202401010002_create_rules.sql": """\
        -- Create the rules table.
        -- migrate:up
        CREATE TABLE rules (
            id INTEGER PRIMARY KEY,
            zone_id INTEGER NOT NULL REFERENCES zones (id),
            action TEXT NOT NULL
        );
        CREATE INDEX rules_by_zone ON rules (zone_id);
        INSERT INTO rules (zone_id, action) SELECT id, 'accept' FROM zones;
        -- migrate:down
        DROP TABLE rules;
        """,
    "202401010003_add_zone_mtu.sql": """\
        -- Give zones an MTU.
        -- migrate:up
        ALTER TABLE zones ADD COLUMN mtu INTEGER NOT NULL DEFAULT 1500;
        -- migrate:down
        ALTER TABLE zones DROP COLUMN mtu;
        """,
    "202401010004_create_leases.sql": """\
        -- Lease records stored as JSON.
        -- migrate:up
        CREATE TABLE leases (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120)
        INSERT INTO leases (data)
        SELECT json_object('mac', printf('aa:%04d', i), 'ttl', i) FROM n;
        -- migrate:down
        DROP TABLE leases;
        """,
    "202401010005_reshape_leases.py": '''\
        """Reshape the lease records, 15 at a time: 8 batches each way."""
        component = "state"
        depends_on = ["202401010004"]


        def up(ctx, records):
            records.transform("leases", lambda r: {"hw": r["mac"], "ttl": r["ttl"]}, batch_size=15)


        def down(ctx, records):
            records.transform("leases", lambda r: {"mac": r["hw"], "ttl": r["ttl"]}, batch_size=15)
        ''',
}
FIRST, SECOND, RESHAPE = "202401010001", "202401010002", "202401010005"
LOW_CHECKPOINT = 2
"""WAL pages: the journal and state.db checkpoint inside every run, and the cuts meet them."""


@dataclass(frozen=True)
class Scenario:
    """A command, the journal mode of state.db, and how the interrupted run opens SQLite."""

    name: str
    # migrate (fresh), rollback (to FIRST), recover (*), restore (the first backup),
    # recover-rollback (**)
    command: str
    state_journal: str  # "delete" (SQLite's default: the product uses EXTRA) or "wal" (FULL)
    journal_synchronous: str = "FULL"
    target_synchronous: str | None = None
    fates: tuple[vfs.Fate, ...] = vfs.FATES
    autocheckpoint: int | None = None

    def options(self) -> SqliteOptions:
        return SqliteOptions(
            vfs=vfs.NAME,
            journal_synchronous=self.journal_synchronous,
            target_synchronous=self.target_synchronous,
            wal_autocheckpoint=self.autocheckpoint,
        )


_BASE = [
    Scenario("migrate, state.db DELETE+EXTRA", "migrate", "delete"),
    Scenario("migrate, state.db WAL+FULL", "migrate", "wal"),
    Scenario("rollback, state.db DELETE+EXTRA", "rollback", "delete"),
    Scenario("rollback, state.db WAL+FULL", "rollback", "wal"),
    Scenario("recover, state.db DELETE+EXTRA", "recover", "delete"),
    Scenario("recover, state.db WAL+FULL", "recover", "wal"),
    Scenario("recover a cut batched rollback, state.db DELETE+EXTRA", "recover-rollback", "delete"),
    Scenario("recover a cut batched rollback, state.db WAL+FULL", "recover-rollback", "wal"),
    Scenario("backup restore, state.db DELETE+EXTRA", "restore", "delete"),
    Scenario("backup restore, state.db WAL+FULL", "restore", "wal"),
]
SCENARIOS = _BASE + [
    dataclasses.replace(
        s, name=f"{s.name}, checkpoint every {LOW_CHECKPOINT} pages", autocheckpoint=LOW_CHECKPOINT
    )
    for s in _BASE
]
"""(*) recover starts where a power cut at SECOND's commit left a migrate; (**) where one
after the third batch of RESHAPE's down left a rollback: see Bench. Every scenario runs
twice: with SQLite's checkpoint threshold, and with one so low that the journal and
state.db checkpoint inside every run (issue 13: a checkpoint without an fsync lost a
whole run's events, and no scenario had reached one)."""
CONTROLS = [
    Scenario("control: journal WAL+NORMAL", "migrate", "delete", journal_synchronous="NORMAL"),
    Scenario("control: state.db WAL+NORMAL", "migrate", "wal", target_synchronous="NORMAL"),
    Scenario("control: state.db DELETE+FULL", "migrate", "delete", target_synchronous="FULL"),
]


@dataclass
class Figures:
    """What one scenario's campaign did: cut points x fates = runs, and how many failed."""

    scenario: str
    events: int
    fates: int
    per_fate: int = 0
    cut_points: int = 0
    runs: int = 0
    violated: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        points = self.events + 1
        if self.per_fate == points:
            sample = f"{points} cut points"
        else:
            sample = f"{self.per_fate} of {points} cut points ({self.cut_points} distinct)"
        return (
            f"{self.scenario}: {self.events} I/O events; {sample} x {self.fates} fates = "
            f"{self.runs} runs, {self.violated} with a violated invariant ({self.seconds:.1f}s)"
        )


class Bench:
    """One appliance root, reset to the scenario's start state before every run."""

    def __init__(self, root: Path, scenario: Scenario) -> None:
        self.scenario = scenario
        self.root = root
        (root / "etc/flywall").mkdir(parents=True)
        (root / "etc/flywall/flywall.hcl").write_text(CONFIG, encoding="utf-8")
        (root / "etc/flywall/migration.hcl").write_text(SETTINGS, encoding="utf-8")
        migrations = root / "etc/flywall/migrations"
        migrations.mkdir()
        for name, text in MIGRATIONS.items():
            (migrations / name).write_text(textwrap.dedent(text), encoding="utf-8")
        settings = load_settings(root)
        self.normal = Workspace(settings)
        self.cut = Workspace(settings, scenario.options())
        self.var = settings.paths.state_db.parent
        self.template = root / "start"
        self._prepare()
        self.reference = self._run_reference()

    def _prepare(self) -> None:
        self.var.mkdir(parents=True)
        # The appliance's state.db exists before any migration, in the mode under test (the
        # engine creates a missing one in WAL, so DELETE must be made here to be tested).
        db = apsw.Connection(str(self.normal.paths.state_db))
        db.execute(f"PRAGMA journal_mode = {self.scenario.state_journal.upper()}").fetchall()
        db.execute("CREATE TABLE IF NOT EXISTS appliance_settings (k TEXT PRIMARY KEY, v TEXT)")
        db.close()
        if self.scenario.command in ("rollback", "restore"):
            commands.migrate(self.normal)  # backup_before: the backup a restore goes back to
        if self.scenario.command == "recover":
            self._interrupt_second_migration()
        if self.scenario.command == "recover-rollback":
            commands.migrate(self.normal)
            self._interrupt_batched_rollback()
        shutil.copytree(self.var, self.template)

    def _interrupt_second_migration(self) -> None:
        """Leave state.db and the journal as a power cut at SECOND's commit leaves them.

        The cut is the last I/O on state.db before the journal hears of the commit: in
        DELETE mode the journal's unlink (a hot journal stays behind, so recovery starts by
        rolling it back), in WAL mode the WAL's sync. The journal shows SECOND running.
        """
        shutil.copytree(self.var, self.template)
        acks: list[tuple[str, str, int]] = []
        sim = vfs.start()
        commands.migrate(
            self.cut, on_event=lambda row, _: acks.append((row.kind, row.migration, sim.events))
        )
        sim.settle()
        started = next(n for kind, m, n in acks if kind == "MigrationStarted" and m == SECOND)
        told = next(n for _, _, n in acks if n > started)
        state_db = str(self.normal.paths.state_db)
        cut = max(
            k
            for k, (_, path) in enumerate(sim.log, 1)
            if started < k <= told and path.startswith(state_db)
        )
        self.reset()
        shutil.rmtree(self.template)
        sim = vfs.start(cut, "drop")
        try:
            commands.migrate(self.cut)
        except Exception:
            died = sim.dead
            sim.settle()
            if not died:
                raise
        sim.settle()
        assert sim.cut_event == f"#{cut} {sim.log[cut - 1][0]}", sim.cut_event

    def _interrupt_batched_rollback(self) -> None:
        """Leave a rollback cut right after RESHAPE's third batch of its down committed.

        The cut is the I/O event right after the journal acknowledged that batch (the
        `drop` fate keeps everything synced): three batches of records are back in their
        old shape, the rest are not, and the journal shows RESHAPE rolling back.
        """
        shutil.copytree(self.var, self.template)
        acks: list[tuple[str, str, int]] = []
        sim = vfs.start()
        commands.rollback(
            self.cut,
            to=FIRST,
            on_event=lambda row, _: acks.append((row.kind, row.migration, sim.events)),
        )
        sim.settle()
        batches = [n for kind, m, n in acks if kind == "BatchCommitted" and m == RESHAPE]
        self.reset()
        shutil.rmtree(self.template)
        sim = vfs.start(batches[2] + 1, "drop")
        with contextlib.suppress(Exception):
            commands.rollback(self.cut, to=FIRST)
        assert sim.dead, "the rollback ended before its third batch"
        sim.settle()

    def _run_reference(self) -> Observed:
        self.reset()
        self.act(self.normal)
        reference = observe(self.normal)
        self.reset()
        return reference

    def reset(self) -> None:
        shutil.rmtree(self.var)
        shutil.copytree(self.template, self.var)

    def act(self, ws: Workspace, on_event: AckLog | None = None) -> object:
        if self.scenario.command == "rollback":
            return commands.rollback(ws, to=FIRST, on_event=on_event)
        if self.scenario.command in ("recover", "recover-rollback"):
            return commands.recover(ws, on_event=on_event)
        if self.scenario.command == "restore":
            (first, *_) = backup.list_backups(ws)  # the one taken before the migrate run
            return commands.backup_restore(ws, first.backup_id, on_event=on_event)
        return commands.migrate(ws, on_event=on_event)

    def redo(self, ws: Workspace) -> None:
        """Run the command again to completion, as the operator would after power returns."""
        with contextlib.suppress(errors.NothingToDo):  # the cut run had finished the work
            self.act(ws)

    def count_events(self) -> int:
        """Dry run under the VFS, never cut: how many I/O events the scenario makes."""
        self.reset()
        sim = vfs.start()
        self.act(self.cut)
        sim.settle()
        return sim.events

    def run(self, cut_at: int, fate: vfs.Fate) -> list[str]:
        """Cut the power at the `cut_at`-th I/O event, then check every invariant."""
        self.reset()
        acked = AckLog()
        sim = vfs.start(cut_at, fate, seed=self.scenario.name)
        try:
            self.act(self.cut, acked)
        except Exception:
            died = sim.dead
            sim.settle()  # while the traceback still holds the dead run's connections
            if not died:
                raise  # the run failed with the power on: a bug, not a simulated power loss
        sim.settle()
        return check_after_cut(self.normal, acked.events, self.redo, self.reference)


def cut_points(events: int, fate_index: int, fates: int, *, every: bool) -> list[int]:
    """Cut points in 1..events+1: all of them, or SAMPLES spread evenly.

    A sample always holds the first event and the cut after the run; each fate's grid is
    shifted by a fraction of a step, so together the fates cover more distinct points.
    """
    last = events + 1
    if every or last <= SAMPLES:
        return list(range(1, last + 1))
    step = (last - 1) / (SAMPLES - 1)
    shift = fate_index / fates
    inner = {1 + int((i + shift) * step) for i in range(1, SAMPLES - 1)}
    return sorted(inner | {1, last})


def campaign(root: Path, scenario: Scenario, *, every: bool = LONG) -> Figures:
    """Run `scenario` cut at every (or every sampled) I/O event, under every fate."""
    t0 = time.monotonic()
    bench = Bench(root, scenario)
    events = bench.count_events()
    figures = Figures(scenario.name, events, len(scenario.fates))
    points: set[int] = set()
    for index, fate in enumerate(scenario.fates):
        chosen = cut_points(events, index, len(scenario.fates), every=every)
        points.update(chosen)
        figures.per_fate = max(figures.per_fate, len(chosen))
        for k in chosen:
            problems = bench.run(k, fate)
            figures.runs += 1
            if problems:
                figures.violated += 1
                if len(figures.examples) < 3:
                    figures.examples.append(f"cut at #{k} ({fate}): {'; '.join(problems)}")
    figures.cut_points = len(points)
    figures.seconds = time.monotonic() - t0
    return figures


def powercut_figures(workdir: Path, *, every: bool = LONG) -> list[Figures]:
    """Every scenario and negative control; the counts the crash-testing report quotes."""
    return [
        campaign(workdir / f"s{i}", scenario, every=every)
        for i, scenario in enumerate(SCENARIOS + CONTROLS)
    ]


def summarize(figures: list[Figures]) -> str:
    """One line for the report: scenarios, runs (cut point x fate), violations, controls."""
    controls = {c.name for c in CONTROLS}
    product = [f for f in figures if f.scenario not in controls]
    negative = [f for f in figures if f.scenario in controls]
    return (
        f"power cut: {len(product)} scenarios, {sum(f.runs for f in product)} runs "
        f"(cut point x fate; {sum(f.cut_points for f in product)} of "
        f"{sum(f.events + 1 for f in product)} cut points covered), "
        f"{sum(f.violated for f in product)} with a violated invariant; negative controls "
        f"caught: {sum(1 for f in negative if f.violated)} of {len(negative)} "
        f"({sum(f.violated for f in negative)} of {sum(f.runs for f in negative)} runs)"
    )


_FIGURES: list[Figures] = []


@pytest.fixture(scope="module", autouse=True)
def _print_the_totals() -> object:
    yield
    if _FIGURES:
        print(f"\n{summarize(_FIGURES)}")


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.torture
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_a_power_cut_at_any_io_event_breaks_no_invariant(
    tmp_path: Path, scenario: Scenario
) -> None:
    """The product's durability settings survive a cut at every I/O event, under every fate."""
    figures = campaign(tmp_path, scenario)
    _FIGURES.append(figures)
    print(f"\n{figures.line()}")
    assert figures.events > 0
    assert figures.violated == 0, "\n".join(figures.examples)


@pytest.mark.torture
@pytest.mark.parametrize("control", CONTROLS, ids=lambda s: s.name)
def test_the_checker_catches_a_durability_setting_the_product_refuses(
    tmp_path: Path, control: Scenario
) -> None:
    """Negative control: with a setting that loses acknowledged commits the same checker
    must report violations; if it reports none, the checker or the VFS is broken."""
    figures = campaign(tmp_path, control)
    _FIGURES.append(figures)
    print(f"\n{figures.line()} (caught: {'yes' if figures.violated else 'NO'})")
    if figures.examples:
        print(f"  e.g. {figures.examples[0]}")
    assert figures.violated > 0, f"{control.name} was not caught in {figures.runs} runs"


# -- the VFS itself -----------------------------------------------------------------------


def _raw_run(directory: Path, journal_mode: str, synchronous: str, acked: list[int]) -> None:
    """Four commits to x.db, then unrelated I/O in another directory."""
    db = apsw.Connection(str(directory / "x.db"), vfs=vfs.NAME)
    db.execute(f"PRAGMA journal_mode = {journal_mode}").fetchall()  # a row stops execute()
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    for i in range(4):
        db.execute("INSERT INTO t VALUES (?)", (i,))
        acked.append(i)
    (directory / "other").mkdir()
    other = apsw.Connection(str(directory / "other/y.db"), vfs=vfs.NAME)
    other.execute("PRAGMA journal_mode = WAL").fetchall()
    other.execute("CREATE TABLE u (y); INSERT INTO u VALUES (1)")
    other.close()
    db.close()


def _raw_losses(tmp_path: Path, journal_mode: str, synchronous: str) -> tuple[int, int]:
    """Cut plain SQLite at every event under `drop`: (runs, runs that lost a commit)."""
    directory = tmp_path / f"{journal_mode}-{synchronous}"
    directory.mkdir()
    sim = vfs.start()
    _raw_run(directory, journal_mode, synchronous, [])
    sim.settle()
    runs = lost = 0
    for k in range(1, sim.events + 2):
        shutil.rmtree(directory)
        directory.mkdir()
        acked: list[int] = []
        sim = vfs.start(k, "drop")
        try:
            _raw_run(directory, journal_mode, synchronous, acked)
        except apsw.Error:
            sim.settle()
        sim.settle()
        db = apsw.Connection(str(directory / "x.db"))
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = db.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall()
        rows = db.execute("SELECT count(*) FROM t").fetchall()[0][0] if tables else 0
        db.close()
        runs += 1
        lost += rows < len(acked)
    return runs, lost


@pytest.mark.parametrize(
    ("journal_mode", "synchronous", "loses"),
    [("delete", "FULL", True), ("delete", "EXTRA", False), ("wal", "NORMAL", True),
     ("wal", "FULL", False)],
)  # fmt: skip
def test_the_vfs_reproduces_what_sqlite_promises_for_each_mode(
    tmp_path: Path, journal_mode: str, synchronous: str, loses: bool
) -> None:
    """Plain SQLite under the VFS: DELETE+FULL (the unlink is not durable) and WAL+NORMAL
    lose acknowledged commits; DELETE+EXTRA and WAL+FULL never do (CRASH-TESTING.md)."""
    runs, lost = _raw_losses(tmp_path, journal_mode, synchronous)
    assert runs > 10
    assert (lost > 0) is loses, f"{lost} of {runs} runs lost a commit"


def test_an_unlink_without_a_directory_sync_is_undone_by_drop(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    db = apsw.Connection(str(path))
    db.execute("CREATE TABLE t (x)")
    db.close()
    sim = vfs.start(None, "drop")
    db = apsw.Connection(str(path), vfs=vfs.NAME)
    db.execute("PRAGMA synchronous = FULL")
    db.execute("INSERT INTO t VALUES (1)")
    db.close()
    assert not Path(f"{path}-journal").exists()
    sim.settle()
    assert Path(f"{path}-journal").exists(), "the journal's unlink was never made durable"
    db = apsw.Connection(str(path))
    assert db.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    db.close()


def test_tear_keeps_a_prefix_cut_at_a_sector_boundary(tmp_path: Path) -> None:
    sizes = set()
    for seed in range(20):
        path = tmp_path / f"f{seed}"
        path.write_bytes(b"")
        sim = vfs.start(None, "tear", seed)
        inode = sim.opened(str(path), existed=True)
        inode.ops.append(("w", 0, b"a" * 4096))
        inode.ops.append(("w", 4096, b"b" * 4096))
        path.write_bytes(b"a" * 4096 + b"b" * 4096)
        sim.settle()
        data = path.read_bytes()
        assert len(data) % vfs.SECTOR == 0
        assert data == (b"a" * 4096 + b"b" * 4096)[: len(data)]
        sizes.add(len(data))
    assert len(sizes) > 3, sizes


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        figures = powercut_figures(Path(workdir))
        for one in figures:
            print(one.line())
            for example in one.examples[:1]:
                print(f"  e.g. {example}")
        print(summarize(figures))


if __name__ == "__main__":
    main()
