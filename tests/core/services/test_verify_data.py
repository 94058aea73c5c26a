"""`validate --all`, `verify --data` and the `current_version` warning (issue 16 items 1, 2, 4).

Every case runs the real CLI as a subprocess on an appliance in tmp_path.
"""

from __future__ import annotations

import json

import apsw

from tests.conftest import Appliance, create_table_migration

V1 = "202401010001"
V2 = "202401010002"

CHECKED = """\
-- Leases, checked.
-- migrate:up
CREATE TABLE leases (id INTEGER PRIMARY KEY, ip TEXT);
INSERT INTO leases (ip) VALUES ('10.0.0.2');
-- migrate:down
DROP TABLE leases;
-- migrate:verify
SELECT count(*) = 0 FROM leases WHERE ip IS NULL;
"""

PARENT_CHILD = """\
-- Zones and their interfaces.
-- migrate:up
CREATE TABLE zones (id INTEGER PRIMARY KEY);
CREATE TABLE members (id INTEGER PRIMARY KEY, zone INTEGER REFERENCES zones(id));
-- migrate:down
DROP TABLE members;
DROP TABLE zones;
"""


def applied(app: Appliance) -> None:
    app.write(f"{V1}_leases.sql", CHECKED)
    app.write(f"{V2}_zones.sql", PARENT_CHILD)
    result = app.cli("migrate")
    assert result.returncode == 0, result.stderr


def poke(app: Appliance, sql: str) -> None:
    """Change state.db behind the engine's back (as a bug or an operator would)."""
    db = apsw.Connection(str(app.state_db))
    db.execute(sql)
    db.close()


def test_validate_all_runs_the_all_only_checks_and_says_which_they_are(appliance):
    applied(appliance)

    everything = appliance.cli("validate", "--all")
    plain = appliance.cli("validate")

    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert "ok    journal integrity (--all only): ok\n" in everything.stdout
    assert "ok    backups (--all only): ok\n" in everything.stdout
    assert f"ok    verify {V1}: ok\n" in everything.stdout
    assert "ok    integrity: ok\n" in everything.stdout
    assert "--all only" not in plain.stdout
    assert set(plain.stdout.splitlines()) <= set(everything.stdout.splitlines())


def test_validate_all_fails_on_a_backup_that_no_longer_matches_its_manifest(appliance):
    applied(appliance)
    backups = appliance.root / "var/lib/flywall/migration-backups"
    copy = next(p for p in backups.rglob("*") if p.is_file() and p.name != "manifest.json")
    copy.write_bytes(copy.read_bytes() + b"tampered")

    result = appliance.cli("validate", "--all", "--json")

    assert result.returncode == 4, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert "digest differs from the manifest" in report["checks"]["backups"]
    assert appliance.cli("validate").returncode == 0  # only --all reads the backups


def test_verify_data_runs_the_data_checks_alone(appliance):
    applied(appliance)

    result = appliance.cli("verify", "--data")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (
        f"ok    integrity: ok\nok    foreign keys: ok\nok    verify {V1}: ok\n"
    )
    assert appliance.cli("verify").stdout == result.stdout  # --data is the default scope


def test_verify_data_fails_when_a_migration_verify_no_longer_holds(appliance):
    applied(appliance)
    poke(appliance, "INSERT INTO leases (ip) VALUES (NULL)")

    result = appliance.cli("verify", "--data", "--json")

    assert result.returncode == 4, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["checks"][f"verify {V1}"].startswith("VerifyFailed: ")
    assert report["checks"]["integrity"] == "ok"


def test_verify_data_names_a_foreign_key_violation(appliance):
    applied(appliance)
    poke(appliance, "INSERT INTO members (zone) VALUES (42)")

    result = appliance.cli("verify", "--data")

    assert result.returncode == 4
    assert "FAIL  foreign keys: 1 violation(s), first ('members', 1, 'zones', 0)\n" in result.stdout


def test_verify_data_on_a_box_without_state_db_passes_and_says_so(appliance):
    result = appliance.cli("verify", "--data")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok    state.db: ok (not created yet)\n"


def test_a_current_version_that_disagrees_with_the_applied_one_is_a_validate_warning(appliance):
    create_table_migration(appliance, V1, "things")
    appliance.migrate()
    appliance.configure(f'current_version = "{V2}"\n')

    result = appliance.cli("validate")

    assert result.returncode == 0, result.stdout  # a warning, not a failure
    settings = appliance.settings
    assert (
        f"warn  current_version: {settings}: current_version is {V2} "
        f"but the applied version is {V1} (database {V1})\n"
    ) in result.stdout
    appliance.configure(f'current_version = "{V1}"\n')
    assert "ok    current_version: ok\n" in appliance.cli("validate").stdout
