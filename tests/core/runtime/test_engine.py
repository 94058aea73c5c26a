"""The engine, through the commands API: replay, append-only journal, failures, rollback, time."""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING

import apsw
import freezegun
import pytest
from conftest import create_table_migration
from templates import build_demo

from flywall.core import commands
from flywall.core.appliance import demo
from flywall.core.appliance.workspace import Workspace
from flywall.core.model import errors, projection
from flywall.core.runtime import snapshot
from flywall.core.runtime.engine import Engine
from flywall.core.targets.database import bookkeeping, schema_fingerprint

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Appliance

V1, V2 = "202401010001", "202401010002"
LEASES = "202312010003"  # the shipped migration that adds hostname and vendor_class

SEED_ALPHA = """\
    -- Create alpha with two rows.
    -- migrate:up
    CREATE TABLE alpha (id INTEGER PRIMARY KEY, name TEXT);
    INSERT INTO alpha (name) VALUES ('one'), ('two');
    -- migrate:down
    DROP TABLE alpha;
    """

BROKEN_SQL = """\
    -- Create beta, then stumble on a syntax error.
    -- migrate:up
    CREATE TABLE beta (id INTEGER PRIMARY KEY);
    CREATE TABLE oops (id INTEGER PRIMARY KEY,);  -- FAULT
    -- migrate:down
    DROP TABLE beta;
    """

BROKEN_PYTHON = '''\
    """Create and fill beta, change alpha, then raise."""
    component = "database"


    def up(ctx, db):
        db.execute("CREATE TABLE beta (id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO beta VALUES (1), (2)")
        db.execute("UPDATE alpha SET name = 'changed'")
        raise RuntimeError("boom after writing")  # FAULT


    def down(ctx, db):
        db.execute("DROP TABLE beta")
    '''
BROKEN = {"sql": (f"{V2}_broken.sql", BROKEN_SQL), "python": (f"{V2}_broken.py", BROKEN_PYTHON)}


def remove_fault(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(line for line in lines if "FAULT" not in line), encoding="utf-8")


def dump(path: Path) -> tuple[str, dict[str, list[tuple[object, ...]]]]:
    """Return the schema fingerprint (our bookkeeping tables included) and every table's rows."""
    with closing(apsw.Connection(str(path))) as db:
        names = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        tables = [name for (name,) in names]
        rows = {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
        return schema_fingerprint(db), rows


def user_schema(path: Path) -> str:
    """The fingerprint the engine records: the schema without the migration bookkeeping."""
    with closing(apsw.Connection(str(path))) as db:
        return schema_fingerprint(db, bookkeeping("schema_versions"))


def leases(path: Path) -> list[tuple[object, ...]]:
    with closing(apsw.Connection(str(path))) as db:
        return db.execute("SELECT * FROM dhcp_leases ORDER BY mac_address").fetchall()


def events(ws: Workspace, kind: str, migration: str | None = None) -> list[dict[str, object]]:
    return [e for e in commands.history(ws, migration=migration) if e["kind"] == kind]


def engine_run(app: Appliance, command: str, *, fails: bool = False, **kwargs: object):
    """Run one writing command through the Engine; return its live projection at the end."""
    with Engine(app.workspace(), command) as engine:
        if fails:
            with pytest.raises(errors.MigrationFailed):
                getattr(engine, command)(**kwargs)
        else:
            getattr(engine, command)(**kwargs)
    return engine.state


def replayed(app: Appliance) -> tuple[projection.Projection, projection.Projection]:
    """Return (full replay through the lifecycle, snapshot plus tail) of the journal."""
    journal = app.workspace().read_journal()
    assert journal is not None
    with journal:
        return snapshot.load(journal, use_snapshot=False), snapshot.load(journal)


# -- replay ---------------------------------------------------------------------------


def test_replaying_the_journal_reproduces_the_live_state_and_status(appliance):
    """After apply, a failure, a rollback and a re-apply, every path to the state agrees.

    The live engine, a full replay, the snapshot, and an old snapshot plus the events after
    it all give the same projection; status is the same with or without the snapshot row.
    """
    create_table_migration(appliance, V1, "alpha")
    broken = appliance.write(f"{V2}_broken.sql", BROKEN_SQL)

    live = engine_run(appliance, "migrate", target=V1)
    assert replayed(appliance) == (live, live)
    journal = appliance.workspace().read_journal()
    with journal:
        old_snapshot = journal.connection.execute("SELECT * FROM snapshots").fetchall()
    assert len(old_snapshot) == 1

    live = engine_run(appliance, "migrate", fails=True)
    assert replayed(appliance) == (live, live)
    live = engine_run(appliance, "rollback", steps=1)
    assert replayed(appliance) == (live, live)
    remove_fault(broken)
    live = engine_run(appliance, "migrate")
    assert replayed(appliance) == (live, live)
    assert {v: r.state for v, r in live.migrations.items()} == {V1: "applied", V2: "applied"}
    assert (live.migrations[V1].attempts, live.migrations[V2].attempts) == (2, 2)

    ws = appliance.workspace()
    before = commands.status(ws, verbose=True)
    with ws.read_journal() as journal:
        journal.connection.execute("DELETE FROM snapshots")
        assert snapshot.load(journal) == live
        # An old snapshot is only a head start: the events after it are replayed on top.
        journal.connection.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?)", old_snapshot[0])
        assert snapshot.load(journal) == live
        journal.connection.execute("DELETE FROM snapshots")
    assert commands.status(ws, verbose=True) == before
    assert before.counts["applied"] == 2


def test_a_snapshot_with_every_field_written_out_still_loads_as_the_same_state(appliance):
    """Snapshots leave default fields out; one written by an older release has them all."""
    import msgspec

    def spelled_out(value: object) -> object:
        if isinstance(value, projection.MigrationRecord | projection.RunRecord):
            return {f: spelled_out(getattr(value, f)) for f in value.__struct_fields__}
        if isinstance(value, dict):
            return {k: spelled_out(v) for k, v in value.items()}
        return value

    create_table_migration(appliance, V1, "alpha")
    live = engine_run(appliance, "migrate")
    with appliance.workspace().read_journal() as journal:
        conn = journal.connection
        ((sealed,),) = conn.execute("SELECT body FROM snapshots").fetchall()
        body = snapshot.SNAPSHOT.unseal(sealed)
        assert body is not None
        fields = {f: spelled_out(getattr(live, f)) for f in live.__struct_fields__}
        full = msgspec.msgpack.encode(fields)
        record = msgspec.msgpack.decode(full)["migrations"][V1]
        assert "last_error" in record, "the older form names every field"
        assert len(full) > len(body), "the snapshot written now leaves defaults out"
        conn.execute("UPDATE snapshots SET body = ?", (snapshot.SNAPSHOT.seal(full),))
        assert snapshot._load_cached(journal) == live  # decoded, not replayed instead
        assert snapshot.load(journal) == live


def test_the_database_refuses_to_change_or_delete_journal_rows(appliance):
    create_table_migration(appliance, V1, "alpha")
    commands.migrate(appliance.workspace())
    with closing(apsw.Connection(str(appliance.journal))) as raw:
        for sql in (
            "UPDATE events SET at_ns = 0 WHERE seq = 2",
            "DELETE FROM events WHERE seq = 2",
            "DELETE FROM events",
            "UPDATE sources SET body = x'00'",
        ):
            with pytest.raises(apsw.ConstraintError, match="append-only"):
                raw.execute(sql)
    # A run's seven events: Run Started/Finished, two ValidationPerformed, BackupCreated,
    # Migration Started/Applied (validate_before/after and backup_before default to true).
    assert commands.journal_verify(appliance.workspace()).events == 7


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "error_type", "message"),
    [
        ("sql", "SQLError", 'near ")": syntax error'),
        ("python", "RuntimeError", "boom after writing"),
    ],
    ids=["sql", "python"],
)
def test_a_failing_migration_leaves_the_database_exactly_as_before(
    appliance, form, error_type, message
):
    appliance.write(f"{V1}_alpha.sql", SEED_ALPHA)
    commands.migrate(appliance.workspace())
    path = appliance.write(*BROKEN[form])
    before = dump(appliance.state_db)

    with pytest.raises(errors.MigrationFailed) as failure:
        commands.migrate(appliance.workspace())

    assert failure.value.exit_code == 1
    assert dump(appliance.state_db) == before
    ws = appliance.workspace()
    row = commands.list_migrations(ws)[1]
    assert (row.version, row.state, row.last_error) == (V2, "failed", f"{error_type}: {message}")
    [failed] = events(ws, "MigrationFailed")
    assert (failed["migration"], failed["phase"]) == (V2, "up")
    assert (failed["error_type"], failed["message"]) == (error_type, message)

    remove_fault(path)
    report = commands.migrate(appliance.workspace())

    assert (report.outcome, report.done) == ("completed", [V2])
    ws = appliance.workspace()
    assert [e["attempt"] for e in events(ws, "MigrationStarted", V2)] == [1, 2]
    row = commands.list_migrations(ws)[1]
    assert (row.state, row.last_error) == ("applied", None)


# -- rollback ---------------------------------------------------------------------------


def test_rollback_then_reapply_returns_to_the_same_schema_fingerprint(appliance):
    create_table_migration(appliance, V1, "alpha")
    create_table_migration(appliance, V2, "beta")
    commands.migrate(appliance.workspace())
    applied = dump(appliance.state_db)[0]

    commands.rollback(appliance.workspace(), steps=2)
    with closing(apsw.Connection(":memory:")) as nothing:
        assert user_schema(appliance.state_db) == schema_fingerprint(nothing)
    commands.migrate(appliance.workspace())

    assert dump(appliance.state_db)[0] == applied


def test_the_shipped_migrations_roll_back_and_reapply_to_the_same_schema(tmp_path):
    """On the demo tree: down restores the pristine schema, and up again the migrated one.

    The fingerprint the journal records after each step is the one on disk.
    """
    build_demo(tmp_path, "seed")
    state_db = Workspace.load(tmp_path).paths.state_db
    pristine = user_schema(state_db)

    commands.migrate(Workspace.load(tmp_path))
    migrated = user_schema(state_db)
    commands.rollback(Workspace.load(tmp_path), to="000000000000")
    assert user_schema(state_db) == pristine
    commands.migrate(Workspace.load(tmp_path))

    assert user_schema(state_db) == migrated != pristine
    applied = events(Workspace.load(tmp_path), "MigrationApplied")
    last = [e for e in applied if e["fingerprint_after"] is not None][-1]
    assert last["fingerprint_after"] == migrated


def test_lease_rows_survive_rolling_back_and_reapplying_the_lease_migration(tmp_path):
    build_demo(tmp_path, "seed")
    state_db = Workspace.load(tmp_path).paths.state_db
    pristine = leases(state_db)

    commands.migrate(Workspace.load(tmp_path))
    migrated = leases(state_db)
    assert sum(1 for lease in migrated if lease[6] is not None) == demo.HOSTS
    assert [lease[:6] for lease in migrated] == pristine
    commands.rollback(Workspace.load(tmp_path), version="202312010003")
    assert leases(state_db) == pristine
    report = commands.migrate(Workspace.load(tmp_path))

    assert report.done == [LEASES]
    assert leases(state_db) == migrated


# -- time -------------------------------------------------------------------------------


def test_journal_times_follow_the_clock_and_history_is_in_time_order(appliance):
    create_table_migration(appliance, V1, "alpha")
    create_table_migration(appliance, V2, "beta")

    with freezegun.freeze_time("2026-01-02 03:04:05") as clock:
        first = commands.migrate(appliance.workspace(), target=V1)
        # Whole seconds: freezegun derives time_ns from a float (int(time() * 1e9)), so a
        # frozen 06.250 reads back as 06.249999872 and renders, truncated, as 06.249.
        clock.move_to("2026-01-02 03:04:07")
        second = commands.migrate(appliance.workspace())

    ws = appliance.workspace()
    applied_at = {r.version: r.applied_at for r in commands.list_migrations(ws)}
    assert applied_at == {V1: "2026-01-02T03:04:05.000Z", V2: "2026-01-02T03:04:07.000Z"}
    assert first.run_id.startswith("20260102T030405-")
    assert second.run_id.startswith("20260102T030407-")
    history = commands.history(ws)
    assert [e["seq"] for e in history] == list(range(1, 15))  # two runs of seven events
    assert [e["at"] for e in history] == sorted(e["at"] for e in history)
    times = {(e["run_id"], e["at"]) for e in history}
    assert times == {
        (first.run_id, "2026-01-02T03:04:05.000Z"),
        (second.run_id, "2026-01-02T03:04:07.000Z"),
    }


def test_the_state_machine_is_imported_only_by_a_writer_that_writes_an_event(appliance):
    """A `migrate` with nothing pending journals nothing, so it never builds the machine.

    (Importing `transitions` costs a writer ~6 ms.) A run that does journal asks it.
    """
    import subprocess
    import sys

    create_table_migration(appliance, "202401010001", "hosts")
    probe = (
        "import sys\n"
        "from flywall.core import commands\n"
        "from flywall.core.appliance.workspace import Workspace\n"
        f"commands.migrate(Workspace.load({str(appliance.root)!r}))\n"
        "print('transitions' in sys.modules)\n"
    )

    def imports_transitions() -> bool:
        run = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        return run.stdout.split()[-1] == "True"

    assert imports_transitions()  # applies 202401010001: events, so the machine
    assert not imports_transitions()  # nothing pending: no event, no machine
    create_table_migration(appliance, "202401010002", "zones")
    assert imports_transitions()


VERIFIED = """\
-- Zones with a default MTU.
-- migrate:up
CREATE TABLE zones (id INTEGER PRIMARY KEY, name TEXT NOT NULL, mtu INTEGER);
INSERT INTO zones (name, mtu) VALUES ('lan', 1500), ('wan', {wan_mtu});
-- migrate:down
DROP TABLE zones;
-- migrate:verify
CREATE TEMP TABLE expected (name TEXT);
SELECT count(*) = 2 FROM zones;
SELECT mtu IS NOT NULL FROM zones ORDER BY id;
"""


@pytest.mark.parametrize(
    ("wan_mtu", "finding"),
    [
        ("1400", None),
        (
            "NULL",
            "`SELECT mtu IS NOT NULL FROM zones ORDER BY id;`: row 2 has 0 as its first value",
        ),
    ],
)
def test_a_sql_verify_is_an_assertion_on_the_data(
    appliance: Appliance, wan_mtu: str, finding: str | None
) -> None:
    """Each query of `-- migrate:verify` must return rows whose first value is true."""
    appliance.write("202401010001_zones.sql", VERIFIED.format(wan_mtu=wan_mtu))
    migrate = appliance.cli("migrate")
    validate = appliance.cli("validate")
    if finding is None:
        assert migrate.returncode == 0, migrate.stderr
        assert validate.returncode == 0, validate.stdout
        return
    assert migrate.returncode == 4, migrate.stderr
    assert "validate_after failed: verify 202401010001: VerifyFailed: " + finding in migrate.stderr


def test_a_sql_verify_query_that_returns_no_row_fails() -> None:
    from flywall.core.scripts import sqlverify

    db = apsw.Connection(":memory:")
    db.execute("CREATE TABLE t (x)")
    sqlverify.check(db, "-- nothing to see\nCREATE TEMP TABLE u (y);\n")
    with pytest.raises(sqlverify.VerifyFailed, match="returned no row"):
        sqlverify.check(db, "SELECT x FROM t;")
    db.execute("INSERT INTO t VALUES ('0.0'), ('yes')")
    with pytest.raises(sqlverify.VerifyFailed, match=r"row 1 has '0\.0'"):
        sqlverify.check(db, "SELECT x FROM t ORDER BY rowid")


# -- version-neutral config migrations (shape fixes) ------------------------------------------------

STAMP_1_1 = '''\
    """Stamp the config 1.1."""
    component = "config"
    schema_version = "1.1"


    def up(ctx, config):
        config.schema_version = "1.1"


    def down(ctx, config):
        config.schema_version = "1.0"
    '''

RENAME_WIDGET = '''\
    """Rename legacy_widget blocks to widget: a shape fix, so no schema_version."""
    component = "config"


    def up(ctx, config):
        for block in config.body.blocks("legacy_widget"):
            config.body.rename_block(block, "widget")


    def down(ctx, config):
        for block in config.body.blocks("widget"):
            config.body.rename_block(block, "legacy_widget")
    '''


def test_a_version_neutral_migration_leaves_the_components_version_where_it_was(appliance):
    appliance.write(f"{V2}_rename_widget.py", RENAME_WIDGET)
    commands.migrate(appliance.workspace())
    assert commands.status(appliance.workspace()).components == {"config": V2}

    appliance.write(f"{V1}_stamp.py", STAMP_1_1)
    commands.migrate(appliance.workspace())

    assert commands.status(appliance.workspace()).components == {"config": "1.1"}


@pytest.mark.parametrize(("block", "wrote"), [("legacy_widget", True), ("widget", False)])
def test_rolling_back_runs_down_only_where_up_wrote_something(appliance, block, wrote):
    """Rollback undoes what up did: after an up that left the file as it was, even an
    edited file is not handed to down, which would respell what up never touched."""
    config = appliance.root / "etc/flywall/flywall.hcl"
    config.write_text(config.read_text(encoding="utf-8") + f"\n{block} {{}}\n", encoding="utf-8")
    appliance.write(f"{V2}_rename_widget.py", RENAME_WIDGET)
    commands.migrate(appliance.workspace())
    edited = config.read_text(encoding="utf-8") + "# edited after the upgrade\n"
    config.write_text(edited, encoding="utf-8")

    commands.rollback(appliance.workspace(), version=V2)

    logged = [row["message"] for row in commands.log(appliance.workspace(), V2)]
    if wrote:
        assert config.read_text(encoding="utf-8") == edited.replace("widget {}", "legacy_widget {}")
        assert "up left the file as it was: nothing to undo" not in logged
    else:
        assert config.read_text(encoding="utf-8") == edited
        assert logged == ["up left the file as it was: nothing to undo"]
