"""Kill the CLI at every named crash point of every scenario, rerun, check the invariants.

The points are enumerated from `FLYWALL_CRASH_LIST` (never hard-coded), so a side effect
that gains a crash point joins this suite by itself. For each (point, occurrence) the
scenario's command is run in a fresh copy of the prepared appliance and killed there with
SIGKILL; the files left behind must satisfy the invariants, and rerunning the command
must end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import pytest
from conftest import Appliance, lease_table_sql
from crashkit import check_after_cut, check_settled, cuts, killed, observe

if TYPE_CHECKING:
    from collections.abc import Callable

ROWS_MIGRATION = '''\
"""Seed the peers table with rows (a data change the crash must not lose or double)."""
component = "database"
depends_on = ["202401010001"]


def up(ctx, db):
    for i in range(50):
        db.execute("INSERT INTO peers (name) VALUES (?)", (f"peer-{i}",))
    ctx.log("inserted 50 peers")


def down(ctx, db):
    db.execute("DELETE FROM peers WHERE name LIKE 'peer-%'")
'''

CREATE_PEERS = """\
-- Create the peers table.
-- migrate:up
CREATE TABLE peers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE INDEX idx_peers_name ON peers(name);
-- migrate:down
DROP TABLE peers;
"""

FAILING = '''\
"""A migration that fails after changing things: its transaction must be undone."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE doomed (id INTEGER)")
    db.execute("INSERT INTO peers (name) VALUES ('half-done')")
    raise RuntimeError("vendor bug")
'''


def two_migrations(app: Appliance) -> None:
    app.write("202401010001_create_peers.sql", CREATE_PEERS)
    app.write("202401010002_seed_peers.py", ROWS_MIGRATION)


def one_migration(app: Appliance) -> None:
    app.write("202401010001_create_peers.sql", CREATE_PEERS)


def applied_then_rollback(app: Appliance) -> None:
    two_migrations(app)
    app.migrate()


def with_failing(app: Appliance) -> None:
    two_migrations(app)
    app.write("202401010003_doomed.py", FAILING)


def interrupted_mid_run(app: Appliance) -> None:
    """Leave the first of two migrations committed but journaled as running."""
    two_migrations(app)
    result = app.cli("migrate", env={"FLYWALL_CRASH_AT": "database-after-commit:1"})
    assert killed(result), result.stderr


API_MIGRATION = '''\
"""Rename the stored webhook route."""
component = "api"


def up(ctx, document):
    for hook in document.setdefault("webhooks", []):
        if hook.get("route") == "/v1/alerts":
            hook["route"] = "/v2/alerts"


def down(ctx, document):
    for hook in document.get("webhooks", []):
        if hook.get("route") == "/v2/alerts":
            hook["route"] = "/v1/alerts"
'''

STATE_MIGRATION = '''\
"""Reshape lease records, in batches."""
component = "state"
depends_on = ["202401010001"]


def up(ctx, records):
    records.transform("leases", lambda r: {"hw": r["mac"], "ttl": r["ttl"]}, batch_size=20)


def down(ctx, records):
    records.transform("leases", lambda r: {"mac": r["hw"], "ttl": r["ttl"]}, batch_size=20)
'''

LEASES = lease_table_sql(
    180, ttl=True, description="Lease records stored as JSON: 9 batches of 20 each way."
)


def api_document(app: Appliance) -> None:
    path = app.root / "var/lib/flywall/api.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"webhooks": [{"name": "pager", "route": "/v1/alerts"}]}\n')
    app.write("202401010003_rename_route.py", API_MIGRATION)


def batched_state(app: Appliance) -> None:
    app.write("202401010001_leases.sql", LEASES)
    app.migrate()
    app.write("202401010002_reshape_leases.py", STATE_MIGRATION)


def batched_state_applied(app: Appliance) -> None:
    batched_state(app)
    app.migrate()


def batched_rollback_cut(app: Appliance) -> None:
    """Leave the batched down cut after its third batch: records in two shapes."""
    batched_state_applied(app)
    result = app.cli("rollback", RESHAPE, env={"FLYWALL_CRASH_AT": "after-BatchCommitted:3"})
    assert killed(result), result.stderr


def batched_up_cut(app: Appliance) -> None:
    """Leave the batched up cut after its third batch."""
    batched_state(app)
    result = app.cli("migrate", env={"FLYWALL_CRASH_AT": "state-batch-committed:3"})
    assert killed(result), result.stderr


def api_cut_after_temp(app: Appliance) -> None:
    """Leave api.json at its before bytes with the after bytes in the temp file."""
    api_document(app)
    result = app.cli("migrate", env={"FLYWALL_CRASH_AT": "file-temp-written:1"})
    assert killed(result), result.stderr


def api_applied(app: Appliance) -> None:
    api_document(app)
    app.migrate()


def auto_rollback(app: Appliance) -> None:
    """A run that fails on its third migration and undoes the first two by down."""
    app.configure("auto_rollback = true\n")
    with_failing(app)


def no_down_then_failing(app: Appliance) -> None:
    """A run whose undo must fall back to restoring the run's backup."""
    app.configure("auto_rollback = true\n")
    app.write("202401010001_create_peers.sql", CREATE_PEERS.split("-- migrate:down", maxsplit=1)[0])
    app.write("202401010003_doomed.py", FAILING)


def backed_up(app: Appliance) -> None:
    """Two migrations applied by a run that took a backup first (backup_before)."""
    applied_then_rollback(app)
    (backup_id,) = [p.name for p in (app.root / "var/lib/flywall/migration-backups").iterdir()]
    (app.root / "backup-id").write_text(backup_id)


def confirmation_expired(app: Appliance) -> None:
    """A run whose confirm_within window has closed: the next command rolls it back."""
    app.configure('confirm_within = "1s"\n')
    two_migrations(app)
    app.migrate()
    time.sleep(1.2)


LABEL_PEERS = """\
-- Label every peer: a SQL step of the schema on an existing state.db, so the run's backup
-- and validate_before are made beside it (core/runtime/overlap.py).
-- migrate:up
ALTER TABLE peers ADD COLUMN label TEXT;
UPDATE peers SET label = 'peer #' || id;
-- migrate:down
ALTER TABLE peers DROP COLUMN label;
"""

COUNT_PEERS = '''\
"""A step after the first: the run goes on once the backup is in."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE peer_count AS SELECT count(*) AS n FROM peers")


def down(ctx, db):
    db.execute("DROP TABLE peer_count")
'''

DUPLICATE_IDS = """\
-- Fails at its second statement (a primary key taken twice), after changing every row.
-- migrate:up
UPDATE peers SET name = name || '!';
UPDATE peers SET id = 1;
-- migrate:down
UPDATE peers SET name = rtrim(name, '!');
"""


def beside_backup(app: Appliance) -> None:
    """state.db holds 50 peers; the next run starts with a SQL step, then a Python one."""
    two_migrations(app)
    app.migrate()
    app.write("202401010004_label_peers.sql", LABEL_PEERS)
    app.write("202401010005_count_peers.py", COUNT_PEERS)


def beside_checks_alone(app: Appliance) -> None:
    """The same with backup_before = false: validate_before alone runs beside the step."""
    app.configure("backup_before = false\n")
    beside_backup(app)


def beside_backup_failing(app: Appliance) -> None:
    """The same, but the SQL step beside the backup fails: undone, journaled after it."""
    two_migrations(app)
    app.migrate()
    app.write("202401010004_duplicate_ids.sql", DUPLICATE_IDS)


RESHAPE = "202401010002"


@dataclass(frozen=True)
class Scenario:
    name: str
    prepare: Callable[[Appliance], None]
    command: tuple[str, ...]
    exit_code: int = 0
    boot_first: bool = False
    """After the cut, run `recover` (what a boot runs) and check again before the rerun:
    what recovery alone leaves must already agree with the journal (issue 13)."""
    every: bool = False
    """Kill at every point also in the bounded run: its side effects interleave in threads."""


SCENARIOS = [
    Scenario("apply", one_migration, ("migrate",)),
    Scenario("two-migration run", two_migrations, ("migrate",)),
    Scenario(
        "rollback", applied_then_rollback, ("rollback", "--to", "000000000000"), boot_first=True
    ),
    Scenario("failing migration", with_failing, ("migrate",), exit_code=1),
    Scenario("recovery interrupted", interrupted_mid_run, ("migrate",)),
    Scenario("api document", api_document, ("migrate",)),
    Scenario("api rollback", api_applied, ("rollback", "--to", "000000000000")),
    Scenario("batched state", batched_state, ("migrate",), boot_first=True),
    Scenario(
        "batched state rollback", batched_state_applied, ("rollback", RESHAPE), boot_first=True
    ),
    Scenario("batched rollback, recovery interrupted", batched_rollback_cut, ("recover",)),
    Scenario("batched up, recovery interrupted", batched_up_cut, ("recover",)),
    Scenario("api recovery (roll forward) interrupted", api_cut_after_temp, ("migrate",)),
    Scenario("auto rollback by down", auto_rollback, ("migrate",), exit_code=1),
    Scenario("auto rollback by backup", no_down_then_failing, ("migrate",), exit_code=1),
    Scenario("backup restore", backed_up, ("backup", "restore", "@backup-id", "--yes")),
    Scenario("confirmation window expired", confirmation_expired, ("recover",)),
    Scenario(
        "first step beside the backup", beside_backup, ("migrate",), boot_first=True, every=True
    ),
    Scenario(
        "first step beside validate_before, no backup",
        beside_checks_alone,
        ("migrate",),
        boot_first=True,
        every=True,
    ),
    Scenario(
        "failing step beside the backup",
        beside_backup_failing,
        ("migrate",),
        exit_code=1,
        every=True,
    ),
]


def resolved(app: Appliance, command: tuple[str, ...]) -> tuple[str, ...]:
    """Replace `@file` arguments with that file's content in the appliance (ids made at setup)."""
    return tuple((app.root / a[1:]).read_text() if a.startswith("@") else a for a in command)


def prepared(tmp_path: Path, scenario: Scenario) -> Appliance:
    app = Appliance(tmp_path / "template")
    app.configure()
    app.migrations_dir.mkdir(parents=True)
    scenario.prepare(app)
    return app


def copy_of(template: Appliance, where: Path) -> Appliance:
    shutil.copytree(template.root, where)
    return Appliance(where)


def uninterrupted(
    template: Appliance, tmp_path: Path, scenario: Scenario
) -> tuple[Appliance, list[str]]:
    """Run the scenario's command once, uncut, in a copy; return it and every `name:n` reached.

    The listing run is the reference run: FLYWALL_CRASH_LIST only appends each point's
    name to a file outside the appliance, so what it leaves is what an uncut run leaves.
    """
    app = copy_of(template, tmp_path / "reference")
    listing = tmp_path / "points.txt"
    result = app.cli(*resolved(app, scenario.command), env={"FLYWALL_CRASH_LIST": str(listing)})
    assert result.returncode == scenario.exit_code, result.stderr
    return app, [line.replace(" ", ":") for line in listing.read_text().splitlines()]


@pytest.mark.torture
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_a_kill_at_every_crash_point_recovers_to_the_uninterrupted_result(
    tmp_path: Path, scenario: Scenario
) -> None:
    template = prepared(tmp_path, scenario)
    reference_app, points = uninterrupted(template, tmp_path, scenario)
    reference = observe(reference_app.root)
    assert points, "the scenario reached no crash point"
    violations: dict[str, list[str]] = {}
    chosen = cuts(points, every=scenario.every)
    for i, (point, env) in enumerate(chosen):
        app = copy_of(template, tmp_path / f"cut-{i}")
        command = resolved(app, scenario.command)
        cut = app.cli(*command, env={"FLYWALL_CRASH_AT": point, **env})
        assert killed(cut), f"{point} was listed but not reached: {cut.stderr}"
        problems = check_after_cut(app.root)
        if scenario.boot_first:
            boot = app.cli("recover", env=env)
            if boot.returncode != 0:
                problems.append(f"recover exit {boot.returncode}: {boot.stderr.strip()}")
            problems += [f"after recover: {p}" for p in check_after_cut(app.root, settled=True)]
        rerun = app.cli(*command, env=env)
        if rerun.returncode not in (0, scenario.exit_code, 2):
            problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip()}")
        if rerun.returncode == 2:  # the cut (or the boot's recovery) had done the work
            done = ("nothing to roll back", f"migration {RESHAPE} is not applied")
            assert any(d in rerun.stderr for d in done), rerun.stderr
        problems += check_settled(app.root, reference)
        if problems:
            violations[point] = problems
    print(
        f"\n{scenario.name}: {len(chosen)} kills at {len({p for p, _ in chosen})} of "
        f"{len(points)} crash points x 1 fate (SIGKILL), violations {len(violations)}"
    )
    assert violations == {}


def test_status_names_an_interrupted_migration_and_migrate_recovers_it(tmp_path: Path) -> None:
    """The closing note's walk-through: kill mid-run, status shows it, migrate finishes."""
    app = prepared(tmp_path, Scenario("i", interrupted_mid_run, ("migrate",)))
    status = app.cli("status")
    assert status.returncode == 0
    assert "INTERRUPTED 202401010001 (up" in status.stdout
    assert "recovery will decide applied" in status.stdout
    assert "marker=present" in status.stdout

    migrate = app.cli("migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert "recovered 202401010001: applied" in migrate.stdout

    history = app.cli("history", "--json")
    recovered = [e for e in json.loads(history.stdout) if e["kind"] == "Recovered"]
    assert len(recovered) == 1
    assert recovered[0]["migration"] == "202401010001"
    assert recovered[0]["decision"] == "applied"
    assert recovered[0]["evidence"]["marker"] == "present"
    finished = [e for e in json.loads(history.stdout) if e["kind"] == "RunFinished"]
    assert [e["outcome"] for e in finished] == ["interrupted", "completed"]
    assert observe(app.root).states == {"202401010001": "applied", "202401010002": "applied"}


def test_recovery_is_idempotent(tmp_path: Path) -> None:
    app = prepared(tmp_path, Scenario("i", interrupted_mid_run, ("migrate",)))
    first = app.cli("recover", "--json")
    second = app.cli("recover", "--json")
    assert first.returncode == 0
    assert second.returncode == 0
    assert '"decision":"applied"' in first.stdout
    assert '"outcome":"nothing_to_do"' in second.stdout


def test_the_checker_catches_a_marker_removed_behind_the_journals_back(tmp_path: Path) -> None:
    """The invariants must be able to fail: drift between journal and target is a finding."""
    app = prepared(tmp_path, Scenario("a", applied_then_rollback, ("migrate",)))
    assert check_after_cut(app.root) == []
    db = apsw.Connection(str(app.state_db))
    db.execute("DELETE FROM flywall_migration_markers WHERE version = '202401010002'")
    db.close()
    assert check_after_cut(app.root) == ["journal says applied but no marker: ['202401010002']"]
    reference = observe(app.root)
    reference.data = "something else"
    assert any(p.startswith("data:") for p in check_settled(app.root, reference))
