"""Invariants of the lifecycle and the engine, for any sequence of commands or events."""

from __future__ import annotations

import re
import tempfile
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
from conftest import Appliance, create_table_migration
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torture import examples

from flywall.core import commands
from flywall.core.model import errors, projection
from flywall.core.model import events as ev
from flywall.core.model.lifecycle import Lifecycle, State
from flywall.core.model.planner import UP_FROM
from flywall.core.model.projection import Projection
from flywall.core.runtime import snapshot
from flywall.core.runtime.engine import Engine, RunReport
from flywall.core.runtime.recorder import Recorder
from flywall.core.targets.database import MARKERS
from flywall.journal import GENESIS, Journal

V1, V2, V3, V4, V5 = (f"20240101000{n}" for n in range(1, 6))
VERSIONS = (V1, V2, V3, V4, V5)
ACTOR = ev.Actor(user="tester", uid=1000, host="box", pid=4242, via="test")

# -- an appliance with five small migrations -----------------------------------------------

HOSTS = f"""\
    -- schema_version: 2.0
    -- depends_on: {V1}
    -- Create hosts.
    -- migrate:up
    CREATE TABLE hosts (id INTEGER PRIMARY KEY, zone INTEGER REFERENCES zones (id));
    -- migrate:down
    DROP TABLE hosts;
    """

NOTES = f'''\
    """Create notes and seed them; down refuses if the rows are not the ones up wrote."""
    component = "database"
    depends_on = ["{V2}"]


    def up(ctx, db):
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("INSERT INTO notes (body) VALUES ('a'), ('b')")
        ctx.log("seeded 2 notes")


    def down(ctx, db):
        (count,) = db.execute("SELECT count(*) FROM notes").fetchone()
        if count != 2:
            raise RuntimeError(f"notes holds {{count}} rows, not the 2 up wrote")
        db.execute("DROP TABLE notes")
        ctx.log("dropped notes")
    '''

ZONE_INDEX = f'''\
    """Index zones by name."""
    component = "database"
    depends_on = ["{V1}"]


    def up(ctx, db):
        db.execute("CREATE INDEX zones_by_name ON zones (name)")


    def down(ctx, db):
        db.execute("DROP INDEX zones_by_name")
    '''

FILES = {
    V2: (f"{V2}_create_hosts.sql", HOSTS),
    V3: (f"{V3}_seed_notes.py", NOTES),
    V5: (f"{V5}_index_zones.py", ZONE_INDEX),
}
SCHEMA = {
    V1: {("table", "zones")},
    V2: {("table", "hosts")},
    V3: {("table", "notes")},
    V4: {("table", "leases")},
    V5: {("index", "zones_by_name")},
}
"""What each migration adds to state.db's schema."""

BROKEN_SQL = """\
    -- Broken on purpose: creates a table, then fails.
    -- migrate:up
    CREATE TABLE half_done (id INTEGER PRIMARY KEY);
    INSERT INTO no_such_table VALUES (1);
    -- migrate:down
    DROP TABLE half_done;
    """
BROKEN_IN_UP = '''\
    """Broken on purpose: writes, then raises."""
    component = "database"


    def up(ctx, db):
        db.execute("CREATE TABLE half_done (id INTEGER PRIMARY KEY)")
        ctx.log("about to fail")
        raise RuntimeError("broken on purpose")


    def down(ctx, db):
        db.execute("DROP TABLE half_done")
    '''
BROKEN_AT_IMPORT = '''\
    """Broken on purpose: the module itself raises when loaded."""
    component = "database"
    raise RuntimeError("broken at import")


    def up(ctx, db):
        pass
    '''


def build_appliance(root: Path) -> Appliance:
    app = Appliance(root)
    app.configure()
    app.migrations_dir.mkdir(parents=True)
    create_table_migration(app, V1, "zones")
    create_table_migration(app, V4, "leases")
    for name, text in FILES.values():
        app.write(name, text)
    return app


def file_of(app: Appliance, version: str) -> Path:
    [path] = app.migrations_dir.glob(f"{version}_*")
    return path


def break_migration(app: Appliance, version: str, how: int) -> None:
    """Replace `version`'s file by a failing one with the same name."""
    path = file_of(app, version)
    if path.suffix == ".sql":
        app.write(path.name, BROKEN_SQL)
    else:
        app.write(path.name, (BROKEN_IN_UP, BROKEN_AT_IMPORT)[how])


def fix_migration(app: Appliance, version: str) -> None:
    path = file_of(app, version)
    path.unlink()
    if version in FILES:
        app.write(*FILES[version])
    else:
        create_table_migration(app, version, {V1: "zones", V4: "leases"}[version])


def state_db(app: Appliance) -> apsw.Connection | None:
    return apsw.Connection(str(app.state_db)) if app.state_db.exists() else None


def markers(app: Appliance) -> set[str]:
    db = state_db(app)
    if db is None:
        return set()
    with closing(db):
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (MARKERS,)).fetchone():
            return set()
        return {row[0] for row in db.execute(f"SELECT version FROM {MARKERS}")}


def component_versions(app: Appliance) -> dict[str, str]:
    """The seed's schema_versions table: each component's version as state.db records it."""
    db = state_db(app)
    if db is None:
        return {}
    with closing(db):
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_versions'").fetchone():
            return {}
        return dict(db.execute("SELECT component, version FROM schema_versions").fetchall())


def schema(app: Appliance) -> set[tuple[str, str]]:
    """The vendor's objects in state.db (not SQLite's own, not our bookkeeping)."""
    db = state_db(app)
    if db is None:
        return set()
    with closing(db):
        rows = db.execute(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return {(t, n) for t, n, table in rows if table not in (MARKERS, "schema_versions")}


def set_poison(app: Appliance, poisoned: bool) -> None:
    """Add (or remove) a row that notes' `down` refuses, so its rollback fails."""
    db = state_db(app)
    if db is None:
        return
    with closing(db):
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'notes'").fetchone():
            if poisoned:
                db.execute("INSERT INTO notes (body) VALUES ('poison')")
            else:
                db.execute("DELETE FROM notes WHERE body = 'poison'")


def head(app: Appliance) -> tuple[int, bytes]:
    journal = Journal.open_existing(app.journal)
    if journal is None:
        return (0, GENESIS)
    with journal:
        return journal.head()


def replayed(app: Appliance) -> tuple[Projection, Projection | None]:
    """Return the full replay of the journal and the snapshot the last run saved."""
    journal = Journal.open_existing(app.journal)
    if journal is None:
        return Projection(), None
    with journal:
        full = snapshot.load(journal, use_snapshot=False)
        again = projection.replay(journal.read(), Lifecycle())
        assert again == full
        row = journal.connection.execute("SELECT seq, body FROM snapshots").fetchone()
        body = None if row is None else snapshot.SNAPSHOT.unseal(row[1])
        cached = None if body is None else msgspec.msgpack.decode(body, type=Projection)
        assert cached is None or cached.seq == row[0]
        assert snapshot.load(journal) == full
    return full, cached


# -- the operations -----------------------------------------------------------------------

ILLEGAL_EVENTS = [
    ev.MigrationApplied(duration_ns=1),
    ev.MigrationFailed(direction="up", phase="up", error_type="E", message="m"),
    ev.MigrationFailed(direction="down", phase="down", error_type="E", message="m"),
    ev.MigrationRolledBack(via="down"),
    ev.MigrationLog(message="stray"),
    ev.BatchCommitted(last_key="k", rows=1),
    ev.WriteIntent(direction="up", path="/x", digest_before=None, digest_after="d"),
    ev.Recovered(direction="up", decision="applied", evidence={}),
    ev.Recovered(direction="down", decision="rolled_back", evidence={}),
]
"""Events that only a running (or rolling back) migration may have: illegal when settled."""

operations = st.one_of(
    st.tuples(st.just("migrate"), st.none()),
    st.tuples(st.just("migrate"), st.none()),
    st.tuples(st.just("migrate"), st.sampled_from([*VERSIONS, "2.0", "9.9"])),
    st.tuples(st.just("rollback_steps"), st.integers(0, 3)),
    st.tuples(st.just("rollback_version"), st.sampled_from(VERSIONS)),
    st.tuples(st.just("rollback_applied"), st.integers(0, 4)),
    st.tuples(st.just("rollback_applied"), st.integers(0, 4)),
    st.tuples(st.just("rollback_to"), st.sampled_from(VERSIONS)),
    # Which migration to break, edit or fix is picked when the step runs, from the ones
    # that step makes sense for: an index into that list.
    st.tuples(st.just("break"), st.integers(0, 4), st.integers(0, 1)),
    st.tuples(st.just("break"), st.integers(0, 4), st.integers(0, 1)),
    st.tuples(st.just("edit_applied"), st.integers(0, 4)),
    st.tuples(st.just("fix"), st.integers(0, 4)),
    st.tuples(st.just("fix"), st.integers(0, 4)),
    st.tuples(st.just("poison"), st.booleans()),
    st.tuples(st.just("illegal"), st.sampled_from(VERSIONS), st.sampled_from(ILLEGAL_EVENTS)),
)
"""Commands, and the file and data edits that make the next command fail or be refused."""


def pick(versions: set[str], index: int) -> str | None:
    return sorted(versions)[index % len(versions)] if versions else None


def edit_files(app: Appliance, op: tuple[Any, ...], broken: set[str]) -> None:
    """Apply an edit step: break a migration that is not applied (it fails when run), edit
    an applied one (its checksum no longer matches), restore one, or poison notes' rows.
    """
    applied = {r.version for r in replayed(app)[0].in_state(State.APPLIED)}
    match op:
        case ("break", index, how):
            version = pick(set(VERSIONS) - applied - broken, index)
        case ("edit_applied", index):
            version, how = pick(applied - broken, index), 0
        case ("fix", index):
            version = pick(broken, index)
            if version is not None:
                fix_migration(app, version)
                broken.discard(version)
            return
        case ("poison", poisoned):
            set_poison(app, poisoned=poisoned)
            return
    if version is not None:
        break_migration(app, version, how)
        broken.add(version)


def failed_version(error: errors.MigrationFailed | errors.DiscoveryError) -> str:
    if isinstance(error, errors.MigrationFailed):
        return error.version
    assert "failed to load" in str(error)
    return Path(error.path).name.split("_", 1)[0]


REFUSED = (errors.UsageError, errors.NothingToDo, errors.GraphError, errors.ChecksumMismatch)
"""What commands raise for a request they turn down before writing anything."""


def run(app: Appliance, op: tuple[Any, ...]) -> object:
    """Run one operation; return its report, or the FlywallError it raised."""
    ws = app.workspace()
    name, *args = op
    try:
        match name:
            case "migrate":
                return commands.migrate(ws, target=args[0], actor=ACTOR)
            case "rollback_steps":
                return commands.rollback(ws, steps=args[0], actor=ACTOR)
            case "rollback_version":
                return commands.rollback(ws, version=args[0], actor=ACTOR)
            case "rollback_to":
                return commands.rollback(ws, to=args[0], actor=ACTOR)
            case "illegal":
                with Engine(ws, "force", actor=ACTOR) as engine:
                    before = engine.state.state_of(args[0])
                    with pytest.raises(errors.IllegalTransition) as info:
                        engine.recorder.append([(args[0], args[1])])
                    assert (info.value.version, info.value.state) == (args[0], before.value)
                    assert not engine.recorder.started
                return info.value
    except errors.FlywallError as e:
        return e
    raise AssertionError(op)


def check_agreement(app: Appliance, op: tuple[Any, ...]) -> Projection:
    """Check what must hold after any command; return the replayed state."""
    state, snapshot = replayed(app)
    # (a) the live state (the snapshot its run saved on the way out) == the replayed state
    if state.seq:
        assert snapshot == state, op
    # (b) markers == applied; the schema and schema_versions follow from what is applied
    applied = {r.version for r in state.in_state(State.APPLIED)}
    assert markers(app) == applied, op
    assert schema(app) == set().union(*(SCHEMA[v] for v in applied)), op
    assert component_versions(app) == state.components(), op
    # (c) one of the six states, all settled; every run that wrote anything finished
    assert all(isinstance(r.state, State) for r in state.migrations.values())
    assert not state.in_state(State.RUNNING, State.ROLLING_BACK), op
    assert state.open_runs == {}, op
    return state


def check_outcome(
    op: tuple[Any, ...], outcome: object, before: Projection, state: Projection, broken: set[str]
) -> None:
    """Check that the command did what it was asked, or failed or was refused for cause."""
    expected = (RunReport, *REFUSED, errors.IllegalTransition, errors.MigrationFailed)
    assert isinstance(outcome, (*expected, errors.DiscoveryError, errors.ValidationFailed))
    if broken & {r.version for r in before.in_state(State.APPLIED)}:
        if op[0] != "illegal":
            assert isinstance(outcome, errors.ChecksumMismatch), (op, outcome)
    elif isinstance(outcome, errors.ValidationFailed):
        # Issue 16.14: a module that raises while loading is found at pre-flight (it was
        # found at its turn, after the ones before it were applied): nothing changes.
        match = re.search(r"/([0-9]{12,})_[^/]*\.py: failed to load: ", str(outcome))
        assert match is not None, (op, outcome)
        assert match[1] in broken, (op, outcome)
        assert {v: r.state for v, r in state.migrations.items()} == {
            v: r.state for v, r in before.migrations.items()
        }, (op, outcome)
    elif isinstance(outcome, errors.MigrationFailed | errors.DiscoveryError):
        # A module that raises while loading surfaces as an unusable file (exit 2), any
        # other failure as MigrationFailed (exit 1); both are journaled alike.
        version = failed_version(outcome)
        failed = state.record(version)
        if isinstance(outcome, errors.DiscoveryError) or outcome.phase == "up":
            assert version in broken, (op, outcome)
            assert failed.state is State.FAILED
        else:  # only notes' down refuses, when poisoned; a failed down stays applied
            assert (version, failed.state) == (V3, State.APPLIED)
        assert failed.last_error is not None
        assert state.last_run is not None
        assert state.last_run.outcome == "failed"
    elif op == ("migrate", None):
        assert not isinstance(outcome, errors.FlywallError), (op, outcome)
        assert set(state.migrations) == set(VERSIONS)
        assert not state.in_state(*UP_FROM)
    elif op[0] == "rollback_version" and not isinstance(outcome, errors.FlywallError):
        assert state.state_of(op[1]) is State.ROLLED_BACK


@settings(max_examples=examples(30, 60), deadline=None)
@given(ops=st.lists(operations, min_size=1, max_size=12))
def test_any_sequence_of_commands_keeps_journal_replay_and_state_db_in_agreement(ops):
    """After every command, whatever it was and however it ended:

    the snapshot the run left (its live state) equals a full replay of the journal; the
    markers in state.db are exactly the migrations the journal shows applied, the schema
    holds exactly what they create, and schema_versions names the same component versions
    as the journal (the newest applied migration's, in whatever order they were applied);
    every migration is settled in one of the six states; every run that wrote anything
    also wrote how it finished; and a command refused up front appends nothing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        app = build_appliance(Path(tmp) / "appliance")
        broken: set[str] = set()
        for drawn in ops:
            if drawn[0] in ("break", "edit_applied", "fix", "poison"):
                edit_files(app, drawn, broken)
                continue
            before, op = replayed(app)[0], drawn
            if drawn[0] == "rollback_applied":  # one of the applied migrations, picked now
                applied = {r.version for r in before.in_state(State.APPLIED)}
                op = ("rollback_version", pick(applied, drawn[1]) or V1)
            head_before = head(app)

            outcome = run(app, op)

            event(f"{op[0]} -> {type(outcome).__name__}")
            state = check_agreement(app, op)
            if isinstance(outcome, (*REFUSED, errors.IllegalTransition)):
                assert head(app) == head_before, (op, outcome)
                assert state == before
            check_outcome(op, outcome, before, state, broken)


# -- the lifecycle through a real recorder -------------------------------------------------

S = State
LEGAL: dict[str, tuple[tuple[State, ...], State | None]] = {
    "start_up": ((S.PENDING, S.FAILED, S.ROLLED_BACK), S.RUNNING),
    "apply": ((S.RUNNING,), S.APPLIED),
    "fail": ((S.RUNNING,), S.FAILED),
    "start_down": ((S.APPLIED, S.FAILED), S.ROLLING_BACK),
    "roll_back": ((S.ROLLING_BACK,), S.ROLLED_BACK),
    "fail_down": ((S.ROLLING_BACK,), S.APPLIED),
    "note": ((S.RUNNING, S.ROLLING_BACK), None),
}
"""DESIGN §6, written out again independently of lifecycle.py: trigger -> (from, to)."""


PLAIN = {
    ev.MigrationApplied: "apply",
    ev.MigrationRolledBack: "roll_back",
    ev.MigrationLog: "note",
    ev.WriteIntent: "note",
    ev.BatchCommitted: "note",
}
DIRECTED = {
    (ev.MigrationStarted, "up"): "start_up",
    (ev.MigrationStarted, "down"): "start_down",
    (ev.MigrationFailed, "up"): "fail",
    (ev.MigrationFailed, "down"): "fail_down",
}
RECOVERED = {
    ("up", "applied"): "apply",
    ("up", "failed"): "fail",
    ("down", "rolled_back"): "roll_back",
    ("down", "applied"): "fail_down",
}


def expected_step(state: State, event: ev.Event) -> State | None:
    """Return the state after `event`, None if it is illegal, `state` if it is no migration's."""
    if isinstance(event, ev.StateForced):  # force: from anywhere, to any real state
        return State(event.to_state) if event.to_state in set(State) else None
    if isinstance(event, ev.Recovered):
        trigger = RECOVERED.get((event.direction, event.decision))
    elif isinstance(event, ev.MigrationStarted | ev.MigrationFailed):
        trigger = DIRECTED[type(event), event.direction]
    elif type(event) in PLAIN:
        trigger = PLAIN[type(event)]
    else:
        return state
    if trigger is None or state not in LEGAL[trigger][0]:
        return None
    dest = LEGAL[trigger][1]
    return state if dest is None else dest


directions = st.sampled_from(["up", "down"])
migration_events = st.one_of(
    st.builds(
        ev.MigrationStarted,
        direction=directions,
        component=st.just("database"),
        checksum=st.sampled_from(["c1", "c2"]),
        attempt=st.integers(1, 3),
    ),
    st.builds(ev.MigrationApplied, duration_ns=st.integers(0, 10)),
    st.builds(
        ev.MigrationFailed,
        direction=directions,
        phase=st.just("up"),
        error_type=st.just("E"),
        message=st.text(max_size=5),
    ),
    st.builds(ev.MigrationRolledBack, via=st.sampled_from(["down", "backup"])),
    st.builds(ev.MigrationLog, message=st.text(max_size=5)),
    st.builds(ev.BatchCommitted, last_key=st.just("k"), rows=st.integers(0, 9)),
    st.builds(
        ev.WriteIntent,
        direction=directions,
        path=st.just("/etc/x"),
        digest_before=st.none(),
        digest_after=st.just("d"),
    ),
    st.builds(
        ev.StateForced,
        from_state=st.just("?"),
        to_state=st.sampled_from([*State, "bogus"]),
        reason=st.just("test"),
        actor=st.just(ACTOR),
    ),
    st.builds(
        ev.Recovered,
        direction=directions,
        decision=st.sampled_from(["applied", "failed", "rolled_back"]),
        evidence=st.just({"marker": "present"}),
    ),
)
other_events = st.sampled_from(
    [
        ev.ValidationPerformed(checks={"x": "ok"}, ok=True),
        ev.BackupCreated(backup_id="b", location="/b"),
        ev.NotificationDelivered(channel="mail", through_seq=1),
    ]
)
items = st.tuples(st.sampled_from(["202401010001", "202401010002"]), migration_events) | (
    st.tuples(st.just(""), other_events)
)


def copy_of(state: Projection) -> Projection:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=Projection)


def recorder_on(path: Path, run_id: str = "run-1") -> Recorder:
    journal = Journal.open(path)
    return Recorder(
        journal, snapshot.load(journal), Lifecycle(), run_id, command="test", actor=ACTOR
    )


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(items, min_size=1, max_size=3), min_size=1, max_size=15))
def test_an_illegal_transition_never_appends_an_event(batches):
    """The recorder refuses a batch with any event the lifecycle forbids, writing nothing.

    Each batch is legal only if every event in it is legal in turn (rules of DESIGN §6
    restated in this test); a refused batch raises IllegalTransition and leaves the head
    (seq and hash) and the live state as they were. Legal batches are all written, and the
    live state always equals a replay of the journal.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.db"
        recorder = recorder_on(path)
        journal = recorder.journal
        try:
            model: dict[str, State] = {}
            for batch in batches:
                after = dict(model)
                legal = True
                for version, event in batch:
                    if not version:
                        continue
                    nxt = expected_step(after.get(version, State.PENDING), event)
                    if nxt is None:
                        legal = False
                        break
                    after[version] = nxt
                head_before = journal.head()
                live_before = copy_of(recorder.projection)
                if legal:
                    rows = recorder.append(batch)
                    assert len(rows) == len(batch) + (rows[0].seq == 1)
                    assert journal.head() == (rows[-1].seq, rows[-1].hash)
                    model = after
                else:
                    with pytest.raises(errors.IllegalTransition):
                        recorder.append(batch)
                    assert journal.head() == head_before
                    assert recorder.projection == live_before
                for version in ("202401010001", "202401010002"):
                    assert recorder.projection.state_of(version) is model.get(version, S.PENDING)
            assert journal.verify()[:2] == journal.head()
            assert snapshot.load(journal, use_snapshot=False) == recorder.projection
        finally:
            journal.close()


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(items, min_size=1, max_size=3), min_size=1, max_size=15))
def test_replaying_a_journal_is_deterministic_and_every_prefix_replays(batches):
    """Two replays of one journal are equal; any prefix replays without error, and
    continuing a prefix's projection with the rest equals the full replay (the snapshot rule).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.db"
        recorder = recorder_on(path)
        with recorder.journal as journal:
            for batch in batches:
                with suppress(errors.IllegalTransition):
                    recorder.append(batch)
            recorder.finish("completed", [])
            full = projection.replay(journal.read(), Lifecycle())
            assert projection.replay(journal.read(), Lifecycle()) == full == recorder.projection
            head_seq, head_hash = journal.head()
            assert (full.seq, full.head_hash) == (head_seq, head_hash)
            for k in range(head_seq + 1):
                prefix = projection.replay(journal.read(until=k), Lifecycle())
                assert prefix.seq == k
                rest = projection.replay(journal.read(k), Lifecycle(), start=prefix)
                assert rest == full
            assert full.open_runs == {}
            if recorder.started:  # a run that wrote nothing leaves no trace at all
                assert full.last_run is not None
                assert full.last_run.outcome == "completed"
            else:
                assert head_seq == 0


def test_the_engine_refuses_to_apply_what_is_applied_without_writing(appliance):
    create_table_migration(appliance, V1, "zones")
    commands.migrate(appliance.workspace(), actor=ACTOR)
    before = head(appliance)
    with Engine(appliance.workspace(), "migrate", actor=ACTOR) as engine:
        started = ev.MigrationStarted(direction="up", component="database", checksum="c", attempt=2)
        with pytest.raises(errors.IllegalTransition, match=f"{V1} is applied; cannot start up"):
            engine.recorder.append([(V1, started)])
    assert head(appliance) == before
