"""Issue 16 items 17 and 19: rough edges an operator meets, each as a real subprocess."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path

from conftest import FLYWALL, Appliance, create_table_migration

V1 = "202401010001"


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The refusal is one `FAILED:` line on stderr with its exit code, never a traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("FAILED: ")
    assert result.stderr.count("\n") == 1
    return result.stderr


def test_backup_restore_with_nobody_to_ask_says_yes_is_needed(appliance: Appliance) -> None:
    create_table_migration(appliance, V1, "hosts")
    appliance.migrate()
    [listed] = json.loads(appliance.cli("backup", "list", "--json").stdout)

    result = subprocess.run(
        [
            FLYWALL,
            "migration",
            "--root",
            str(appliance.root),
            "backup",
            "restore",
            listed["backup_id"],
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert "--yes" in one_line_error(result, 2)
    assert "Aborted!" not in result.stderr
    kinds = [e["kind"] for e in json.loads(appliance.cli("history", "--json").stdout)]
    assert "BackupRestored" not in kinds


def test_demo_where_no_folder_can_be_made_is_one_line(appliance: Appliance) -> None:
    result = subprocess.run(
        [FLYWALL, "migration", "demo", "/proc/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert "/proc/x" in one_line_error(result, 2)


def test_create_after_minute_59_steps_into_the_next_hour_not_minute_60(
    appliance: Appliance,
) -> None:
    """Versions are YYYYMMDDHHMM timestamps: every minute to the hour's end is taken."""
    appliance.configure()
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    taken = [now + dt.timedelta(minutes=m) for m in range(60 - now.minute + 1)]
    for i, at in enumerate(taken):
        create_table_migration(appliance, at.strftime("%Y%m%d%H%M"), f"t{i}")

    result = appliance.cli("create", "add widgets", "--sql")

    assert result.returncode == 0, result.stderr
    version = Path(result.stdout.removeprefix("created ").strip()).name.split("_")[0]
    assert dt.datetime.strptime(version, "%Y%m%d%H%M").replace(tzinfo=dt.UTC) > taken[-1]


def test_create_refuses_a_name_that_already_exists(appliance: Appliance) -> None:
    create_table_migration(appliance, V1, "hosts")
    before = sorted(appliance.migrations_dir.iterdir())

    result = appliance.cli("create", "create hosts")

    assert "'create_hosts' already exists" in one_line_error(result, 2)
    assert sorted(appliance.migrations_dir.iterdir()) == before


def test_status_after_the_confirmation_deadline_says_expired_and_what_comes_next(
    appliance: Appliance,
) -> None:
    appliance.configure('confirm_within = "2s"\n')
    create_table_migration(appliance, V1, "hosts")
    appliance.migrate()
    closes = time.time() + 2  # the window opened before migrate returned
    before = appliance.cli("status")  # also the memo's chance to keep a stale answer
    assert "CONFIRM     run " in before.stdout
    time.sleep(max(0.0, closes + 0.1 - time.time()))  # past the window, not a fixed wait

    after = appliance.cli("status")
    report = json.loads(appliance.cli("status", "--json").stdout)

    assert after.returncode == 0, after.stderr
    assert "CONFIRM" not in after.stdout
    [line] = [x for x in after.stdout.splitlines() if x.startswith("EXPIRED")]
    assert "unconfirmed; the next writing command" in line
    assert line.endswith(f"rolls back {V1}")
    assert list(report["expired_confirmation"].values()) == [[V1]]
    assert appliance.cli("recover").returncode == 0
    assert "EXPIRED" not in appliance.cli("status").stdout


def test_a_malformed_api_json_is_found_by_pre_flight_before_anything_is_applied(
    appliance: Appliance,
) -> None:
    create_table_migration(appliance, V1, "hosts")  # would apply first, before the api step
    appliance.write(
        "202401010002_route.py",
        '"""Rename a route."""\ncomponent = "api"\n\n\ndef up(ctx, document):\n'
        '    document["route"] = "/v2"\n',
    )
    api = appliance.root / "var/lib/flywall/api.json"
    api.parent.mkdir(parents=True, exist_ok=True)
    api.write_text("{not json\n", encoding="utf-8")

    result = appliance.cli("migrate")

    error = one_line_error(result, 4)
    assert error.startswith(f"FAILED: pre-flight: {api}: JSON is malformed")
    assert error.endswith("; nothing was changed\n")
    rows = json.loads(appliance.cli("list", "--json").stdout)
    assert {r["state"] for r in rows} == {"pending"}


def test_a_malformed_flywall_hcl_is_refused_before_anything_is_applied(
    appliance: Appliance,
) -> None:
    """Reading the box's layout already parses flywall.hcl (exit 2, file:line:column), ahead
    of pre-flight; this keeps that order: nothing of the plan is applied."""
    create_table_migration(appliance, V1, "hosts")
    appliance.write(
        "202401010002_zone.py",
        '"""Add a zone."""\ncomponent = "config"\n\n\ndef up(ctx, config):\n    pass\n',
    )
    appliance.config.write_text('schema_version = "1.0"\nzone "lan" {\n', encoding="utf-8")

    result = appliance.cli("migrate")

    assert (
        one_line_error(result, 2)
        == "FAILED: etc/flywall/flywall.hcl:3:1: unexpected end of input\n"
    )
    rows = json.loads(appliance.cli("list", "--json").stdout)
    assert {r["state"] for r in rows} == {"pending"}


def test_debug_shows_the_sql_a_pending_python_database_migration_runs(
    appliance: Appliance,
) -> None:
    create_table_migration(appliance, V1, "hosts")
    appliance.write(
        "202401010002_add_widgets.py",
        '"""Add widgets."""\ncomponent = "database"\n\n\ndef up(ctx, db):\n'
        '    db.execute("CREATE TABLE widgets (id INTEGER PRIMARY KEY)")\n'
        '    db.execute("INSERT INTO widgets (id) VALUES (1)")\n',
    )
    events_before = appliance.cli("history", "--json").stdout

    result = appliance.cli("debug", "202401010002")

    assert result.returncode == 0, result.stderr
    assert (
        "-- up\nCREATE TABLE widgets (id INTEGER PRIMARY KEY);\n"
        "INSERT INTO widgets (id) VALUES (1);\n"
    ) in result.stdout
    assert "hosts" not in result.stdout.split("-- up", 1)[1].split("events:")[0]
    assert appliance.cli("history", "--json").stdout == events_before  # debug only reads
