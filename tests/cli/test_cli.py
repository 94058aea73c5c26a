"""The CLI as a real subprocess: wiring, exit codes, exact output and JSON shapes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import click
import pytest
from conftest import FLYWALL, Appliance, create_table_migration, hold_lock_migration

from flywall.cli.main import main
from flywall.core.scripts.discovery import checksum, discover, shipped_directory

if TYPE_CHECKING:
    from collections.abc import Iterator

V1, V2 = "202401010001", "202401010002"
RUN_ID = r"\d{8}T\d{6}-[0-9a-f]{6}"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def commands_of(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and sub-command under `group`, as the words that invoke it."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from commands_of(command, (*path, name))


def lookup(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The user's error is one line on stderr with its exit code, never a traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("FAILED: ")
    assert result.stderr.count("\n") == 1
    return result.stderr


def applied_appliance(appliance: Appliance) -> Appliance:
    create_table_migration(appliance, V1, "alpha")
    create_table_migration(appliance, V2, "beta")
    appliance.migrate(V1)
    return appliance


# -- help and options -------------------------------------------------------------------


@pytest.mark.parametrize("path", list(commands_of(main)), ids=" ".join)
def test_every_command_has_help_text_answers_help_and_takes_json(path):
    """Every command is documented; every one that is not a group has --json (DESIGN §10).

    `flywall --help` itself is Flywall's own (issue 14: every first word but `migration`
    goes to its binary; tests/cli/test_names.py)."""
    command = lookup(path)
    result = subprocess.run(
        [FLYWALL, *path, "--help"], capture_output=True, text=True, check=False, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: flywall")
    assert command.help
    first_line = command.help.strip().splitlines()[0]
    assert " ".join(first_line.split()) in " ".join(result.stdout.split())
    if isinstance(command, click.Group):
        assert all(name in result.stdout for name in command.commands)
    else:
        assert any("--json" in p.opts for p in command.params)
        assert "--json" in result.stdout


# -- exit codes and messages --------------------------------------------------------------


def test_migrate_applies_and_reports_in_one_line(appliance):
    create_table_migration(appliance, V1, "alpha")

    result = appliance.cli("migrate")

    assert result.returncode == 0
    assert re.fullmatch(rf"applied 1 migration \(run {RUN_ID}\)\n", result.stdout)
    assert result.stderr == f"applying {V1} create_alpha\n"
    assert appliance.cli("migrate").stdout == "nothing to do\n"


def test_list_filters_pending_and_applied(appliance):
    applied_appliance(appliance)

    pending = appliance.cli("list", "--pending")
    applied = json.loads(appliance.cli("list", "--applied", "--json").stdout)

    digest = json.loads(appliance.cli("list", "--pending", "--json").stdout)[0]["checksum"]
    assert pending.returncode == 0
    assert (
        pending.stdout
        == (  # issue 16.19: the checksum column the README promised
            "VERSION       COMPONENT  STATE    CHECKSUM      APPLIED AT  DESCRIPTION\n"
            f"{V2}  database   pending  {digest[:12]}  -           Create beta.\n"
        )
    )
    assert [row["version"] for row in applied] == [V1]
    assert [r["version"] for r in json.loads(appliance.cli("list", "--json").stdout)] == [V1, V2]


@pytest.mark.parametrize("sql", [False, True], ids=["python", "sql"])
def test_create_writes_a_migration_that_discovery_accepts_and_migrate_applies(appliance, sql):
    result = appliance.cli("create", "add widgets", *(["--sql"] if sql else []))

    assert result.returncode == 0, result.stderr
    path = result.stdout.removeprefix("created ").removesuffix("\n")
    assert result.stdout == f"created {path}\n"
    [migration] = discover([appliance.migrations_dir])
    assert (migration.path, migration.slug) == (path, "add_widgets")
    assert migration.path.endswith(".sql" if sql else ".py")
    assert migration.description == "Add widgets"
    assert appliance.cli("migrate").returncode == 0


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["rollback"], "give exactly one of VERSION, --steps N or --to VERSION"),
        (None, ["create", "x", "--component", "config", "--sql"], "--sql .+ database migrations"),
        (None, ["migrate", "--target", "nope"], "unknown target 'nope': .+"),
        (
            lambda app: app.configure("bogus_key = 1\n"),
            ["status"],
            "etc/flywall/migration.hcl: migration.bogus_key: unknown key",
        ),
    ],
    ids=["rollback alone", "create --sql config", "unknown target", "config key"],
)
def test_a_user_error_exits_2_with_one_line_naming_its_cause(appliance, setup, args, message):
    create_table_migration(appliance, V1, "alpha")
    if setup is not None:
        setup(appliance)

    result = appliance.cli(*args)

    assert re.fullmatch(f"FAILED: {message}\n", assert_one_line_error(result, 2))
    assert result.stdout == ""


def test_a_broken_migration_file_stops_a_writer_with_exit_4_naming_it(appliance):
    """Issue 16.14: was exit 2 (a usage error); a broken file is now a pre-flight failure."""
    create_table_migration(appliance, V1, "alpha")
    appliance.write(f"{V2}_bad.py", "component = 'database'\ndef up(ctx, db)\n")

    result = appliance.cli("migrate")

    message = rf"FAILED: /.+/{V2}_bad\.py:2:\d+: syntax error: .+; nothing was run .+\n"
    assert re.fullmatch(message, assert_one_line_error(result, 4))
    assert result.stdout == ""


def test_a_failing_migration_exits_1_and_lists_as_failed(appliance):
    appliance.write(
        f"{V1}_broken.sql",
        """\
        -- Broken.
        -- migrate:up
        CREATE TABLE beta (id INTEGER PRIMARY KEY);
        CREATE TABLE oops (id INTEGER PRIMARY KEY,);
        """,
    )

    result = appliance.cli("migrate")

    assert result.returncode == 1
    assert result.stderr == (
        f"applying {V1} broken\n"
        '  failed: SQLError: near ")": syntax error\n'
        f'FAILED: migration {V1} failed during up: SQLError: near ")": syntax error\n'
    )
    [row] = json.loads(appliance.cli("list", "--json").stdout)
    assert (row["state"], row["last_error"]) == ("failed", 'SQLError: near ")": syntax error')


def test_an_edited_applied_migration_is_refused_naming_both_digests(appliance):
    path = create_table_migration(appliance, V1, "alpha")
    appliance.migrate()
    recorded = checksum(path.read_bytes())[1]
    path.write_text(path.read_text().replace("name TEXT", "name TEXT NOT NULL"))

    result = appliance.cli("migrate")

    stderr = assert_one_line_error(result, 4)
    now = checksum(path.read_bytes())[1]
    assert recorded != now
    assert stderr.startswith(f"FAILED: {path}: ")
    assert re.findall(r"\b[0-9a-f]{64}\b", stderr) == [recorded, now]


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: raw.replace(b"\n", b"\r\n"),
        lambda raw: b"\xef\xbb\xbf" + raw,
        lambda raw: b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"),
    ],
    ids=["crlf", "bom", "bom and crlf"],
)
def test_line_endings_and_a_bom_are_not_an_edit(appliance, edit):
    path = create_table_migration(appliance, V1, "alpha")
    appliance.migrate()
    path.write_bytes(edit(path.read_bytes()))

    result = appliance.cli("migrate")

    assert (result.returncode, result.stdout, result.stderr) == (0, "nothing to do\n", "")


@pytest.mark.parametrize(
    ("trigger", "tamper"),
    [
        ("events_refuse_update", "UPDATE events SET at_ns = at_ns + 1 WHERE seq = 3"),
        ("events_refuse_update", "UPDATE events SET body = x'00' WHERE seq = 3"),
        ("events_refuse_update", "UPDATE events SET body = body || x'00' WHERE seq = 3"),
        ("events_refuse_update", "UPDATE events SET migration = '202401019999' WHERE seq = 3"),
        ("events_refuse_delete", "DELETE FROM events WHERE seq = 3"),
    ],
    ids=["time", "body", "body as text", "migration", "deleted"],
)
def test_journal_verify_names_the_first_tampered_seq(appliance, trigger, tamper):
    applied_appliance(appliance)
    assert appliance.cli("journal", "verify").returncode == 0
    with closing(apsw.Connection(str(appliance.journal))) as raw:
        raw.execute(f"DROP TRIGGER {trigger}")
        raw.execute(tamper)

    result = appliance.cli("journal", "verify")

    stderr = assert_one_line_error(result, 4)
    assert re.fullmatch(r"FAILED: journal is corrupt at seq 3: .+\n", stderr)


def test_a_second_migrate_is_busy_and_names_the_run_and_pid_holding_the_lock(appliance, tmp_path):
    """A migration that waits for a file holds the lock while the second process starts."""
    started, release = tmp_path / "started", tmp_path / "release"
    hold_lock_migration(appliance, V1, started, release)
    command = [FLYWALL, "migration", "--root", str(appliance.root), "migrate"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the first migrate never reached its migration"
        second = appliance.cli("migrate")
    finally:
        release.touch()
        out, _ = first.communicate(timeout=60)

    assert first.returncode == 0
    run_id = re.fullmatch(rf"applied 1 migration \(run ({RUN_ID})\)\n", out)[1]
    lock = appliance.journal.with_name(appliance.journal.name + ".lock")
    busy = (
        rf"FAILED: busy: run {run_id} \(migrate\) by pid {first.pid} \(.+\) "
        rf"since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ holds {re.escape(str(lock))}\n"
    )
    assert re.fullmatch(busy, assert_one_line_error(second, 3))
    assert second.stdout == ""


def test_demo_builds_a_tree_that_migrates(tmp_path):
    directory = tmp_path / "demo"
    demo = subprocess.run(
        [FLYWALL, "migration", "demo", str(directory)], capture_output=True, text=True, check=False
    )
    assert demo.returncode == 0
    assert demo.stdout == (
        f"built a sample appliance (flywall layout) in {directory}\n"
        f"try: flywall-migration --root {directory} status\n"
    )
    migrate = [FLYWALL, "migration", "--root", str(directory), "migrate"]
    result = subprocess.run(migrate, capture_output=True, text=True, check=False)
    # the shipped migrations, and the seed's examples demo writes into the box
    count = len(discover([shipped_directory(), directory / "opt/flywall/etc/migrations"]))
    assert re.fullmatch(rf"applied {count} migrations \(run {RUN_ID}\)\n", result.stdout)


# -- JSON shapes --------------------------------------------------------------------------


def cli_json(app: Appliance, *args: str) -> object:
    result = app.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_list_and_history_json_have_the_documented_shapes(appliance):
    applied_appliance(appliance)

    status = cli_json(appliance, "status")
    assert status["components"] == {"database": V1}
    counts = ("pending", "running", "applied", "failed", "rolling_back", "rolled_back")
    assert status["counts"] == {**dict.fromkeys(counts, 0), "pending": 1, "applied": 1}
    assert status["journal"]["events"] == 7  # the seven kinds below
    assert re.fullmatch(r"[0-9a-f]{64}", status["journal"]["head_hash"])
    assert status["journal"]["head_hash"] == cli_json(appliance, "journal", "verify")["head_hash"]

    applied, pending = cli_json(appliance, "list")
    source = (appliance.migrations_dir / f"{V1}_create_alpha.sql").read_bytes()
    keys = ("version", "component", "description", "state", "checksum")
    assert {key: applied[key] for key in keys} == {
        "version": V1,
        "component": "database",
        "description": "Create alpha.",
        "state": "applied",
        "checksum": checksum(source)[1],
    }
    assert re.fullmatch(ISO, applied["applied_at"])
    assert (pending["version"], pending["state"], pending["applied_at"]) == (V2, "pending", None)

    items = cli_json(appliance, "history")
    kinds = [
        "RunStarted",
        "ValidationPerformed",  # validate_before
        "BackupCreated",  # backup_before
        "MigrationStarted",
        "MigrationApplied",
        "ValidationPerformed",  # validate_after
        "RunFinished",
    ]
    assert [(i["seq"], i["kind"]) for i in items] == list(enumerate(kinds, start=1))
    assert all(re.fullmatch(ISO, i["at"]) and re.fullmatch(RUN_ID, i["run_id"]) for i in items)
    run_started, _, _, started, done, _, finished = items
    assert (run_started["migration"], run_started["command"]) == (None, "migrate")
    assert (started["migration"], started["direction"], started["attempt"]) == (V1, "up", 1)
    assert done["migration"] == V1
    assert done["fingerprint_after"] != started["fingerprint_before"]
    assert (finished["outcome"], finished["done"]) == ("completed", [V1])


@pytest.mark.parametrize(
    "args",
    [("log", V1), ("checksums",), ("journal", "verify"), ("recover",), ("rollback", V1)],
    ids=" ".join,
)
def test_other_commands_print_json_too(appliance, args):
    cli_json(applied_appliance(appliance), *args)


# -- an operator's exploratory test -------------------------------------------------------


@pytest.mark.parametrize("code", ["", "0", "3"])
def test_a_migration_that_calls_sys_exit_fails_the_run_with_exit_1(appliance, code):
    """A vendor's sys.exit() is a failed migration: never exit 0 (success) or 3 (busy)."""
    appliance.write(
        f"{V1}_exits.py",
        f"""\
        \"\"\"Exit.\"\"\"
        import sys

        component = "database"


        def up(ctx, db):
            db.execute("CREATE TABLE alpha (id INTEGER PRIMARY KEY)")
            sys.exit({code})
        """,
    )

    result = appliance.cli("migrate")

    called = f"the migration called sys.exit({code or None})"
    assert result.returncode == 1, result.stderr
    assert result.stderr.endswith(
        f"FAILED: migration {V1} failed during up: SystemExit: {called}\n"
    )
    [row] = cli_json(appliance, "list")
    assert (row["state"], row["last_error"]) == ("failed", f"SystemExit: {called}")
    [*_, finished] = cli_json(appliance, "history")
    assert (finished["kind"], finished["outcome"]) == ("RunFinished", "failed")
    with closing(apsw.Connection(str(appliance.state_db))) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alpha'").fetchall()


@pytest.mark.parametrize("command", [["migrate"], ["rollback", "--steps", "1"], ["recover"]])
def test_a_writer_lock_that_cannot_be_opened_is_one_line_naming_it(appliance, command):
    """As pre-flight reports a folder it cannot write (exit 4), never a traceback.

    The lock path is a directory so that the open fails for root too; an unwritable
    folder (the operator's case) fails the same `os.open`.
    """
    create_table_migration(appliance, V1, "alpha")
    lock = appliance.journal.with_name(appliance.journal.name + ".lock")
    lock.mkdir(parents=True)

    result = appliance.cli(*command)

    expected = f"FAILED: {lock}: cannot take the writer lock: Is a directory\n"
    assert assert_one_line_error(result, 4) == expected
    assert not appliance.journal.exists()


def test_create_where_the_migrations_folder_cannot_be_made_is_one_line_naming_it(appliance):
    """A `directory` under a file stands for any folder create cannot write, root included."""
    appliance.configure('directory = "flywall.hcl/migrations"\n')

    result = appliance.cli("create", "add_peers")

    folder = appliance.root / "etc/flywall/flywall.hcl/migrations"
    expected = f"FAILED: {folder}: cannot create the folder: Not a directory\n"
    assert assert_one_line_error(result, 2) == expected
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["status"], ["list", "--json"], ["migrate"], ["validate"]])
def test_a_config_named_by_config_that_is_missing_is_an_error_not_the_defaults(appliance, command):
    """A typo in --config must not run with every default (another journal, state.db...)."""
    create_table_migration(appliance, V1, "alpha")
    missing = appliance.root / "etc/flywall/flywal.hcl"

    result = appliance.cli("--config", str(missing), *command)

    expected = "FAILED: etc/flywall/flywal.hcl: cannot read: No such file or directory\n"
    assert assert_one_line_error(result, 2) == expected
    assert not appliance.journal.exists()


def test_an_integer_too_big_for_the_settings_cache_is_judged_by_validation_not_a_traceback(
    appliance,
):
    """The expression sends the file to python-hcl2, whose answer is cached as msgpack."""
    appliance.configure("max_rollback_attempts = 99999999999999999999\n")
    config = appliance.settings
    config.write_text("answer = max(1, 2)\n" + config.read_text(encoding="utf-8"), "utf-8")

    result = appliance.cli("status", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["pending"] == 0


def test_log_of_an_unknown_migration_exits_2_as_debug_does(appliance):
    """An empty answer would read as "it logged nothing"; a journaled one without its file
    still answers from the journal."""
    applied = applied_appliance(appliance)
    (applied.migrations_dir / f"{V1}_create_alpha.sql").unlink()

    for command in ("log", "debug"):
        result = applied.cli(command, "209901010001")
        assert assert_one_line_error(result, 2) == "FAILED: unknown migration 209901010001\n"
    assert applied.cli("log", V1).returncode == 0
    assert cli_json(applied, "log", V2) == []


def test_recover_prints_the_evidence_status_showed_for_a_file_migration_too(tmp_path):
    """recover printed only a database's `marker`: "failed ()" for a config migration."""
    root = tmp_path / "box"
    demo = [FLYWALL, "migration", "demo", str(root)]
    assert subprocess.run(demo, capture_output=True, check=False).returncode == 0
    box = Appliance(root)  # the demo's first migration is a config one
    killed = box.cli("migrate", env={"FLYWALL_CRASH_AT": "after-MigrationStarted:1"})
    assert killed.returncode == -signal.SIGKILL
    [interrupted] = cli_json(box, "status")["interrupted"]
    evidence = ", ".join(f"{k}={v}" for k, v in interrupted["evidence"].items())
    assert evidence.startswith("write_intent=")
    version = interrupted["version"]
    assert f"INTERRUPTED {version} " in box.cli("status").stdout
    assert box.cli("status").stdout.endswith(f"recovery will decide failed ({evidence})\n")

    result = box.cli("recover")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"recovered {version}: failed ({evidence})\n"


@pytest.mark.parametrize("command", [["migrate"], ["status"], ["list", "--json"]])
def test_a_root_that_does_not_exist_is_refused_before_anything_is_built_there(tmp_path, command):
    """A typo in --root (or FLYWALL_ROOT) once ran on every default under it: status said
    "pending" and migrate built a journal, a state.db and a flywall.hcl there."""
    missing = tmp_path / "fw01-typo"
    env = {k: v for k, v in os.environ.items() if k != "FLYWALL_NO_FAST_PATH"}
    for extra in ({}, {"FLYWALL_NO_FAST_PATH": "1"}):  # the fast entry point and click
        result = subprocess.run(
            [FLYWALL, "migration", "--root", str(missing), *command],
            capture_output=True,
            text=True,
            env={**env, **extra},
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert f"Error: Invalid value for '--root': Directory '{missing}' does not exist.\n" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr
    assert not missing.exists()


@pytest.mark.parametrize(
    "command",
    [["status"], ["validate"], ["migrate"], ["migrate", "--dry-run"], ["backup", "create"]],
    ids=" ".join,
)
def test_a_state_db_that_is_not_a_database_is_one_line_naming_it_exit_4(appliance, command):
    """A garbled state.db (a bad copy, a truncated flash write) was an apsw traceback."""
    create_table_migration(appliance, V1, "alpha")
    appliance.state_db.parent.mkdir(parents=True, exist_ok=True)
    appliance.state_db.write_bytes(b"not a database, just some bytes\n" * 8)

    result = appliance.cli(*command)

    expected = f"FAILED: {appliance.state_db}: cannot open the database: file is not a database\n"
    assert assert_one_line_error(result, 4) == expected
    assert cli_json(appliance, "history") == []


def route_migration_on_a_malformed_api_json(app: Appliance) -> Path:
    """Write an api migration, and an api.json that is not JSON; return its path."""
    app.write(
        f"{V1}_route.py",
        """\
        \"\"\"Rename a route.\"\"\"
        component = "api"


        def up(ctx, document):
            document["route"] = "/v2"
        """,
    )
    api = app.root / "var/lib/flywall/api.json"
    api.parent.mkdir(parents=True, exist_ok=True)
    api.write_text("{not json\n", encoding="utf-8")
    return api


def test_an_api_migration_on_a_malformed_api_json_names_the_file(appliance):
    api = route_migration_on_a_malformed_api_json(appliance)

    result = appliance.cli("migrate")

    # Issue 16.17: pre-flight parses the file before any migration runs (was exit 1 from up).
    assert result.returncode == 4
    error = f"{api}: JSON is malformed: object keys must be strings (byte 1)"
    assert result.stderr.endswith(f"FAILED: pre-flight: {error}; nothing was changed\n")
    assert api.read_text(encoding="utf-8") == "{not json\n"


def test_checksums_binds_only_applied_files_as_migrate_and_validate_do(appliance):
    """A failed migration is fixed and run again: its edit is no mismatch (it was exit 4
    while validate said "checksums: ok" and migrate applied it)."""
    path = appliance.write(f"{V1}_fix_me.sql", "-- Fix me.\n-- migrate:up\nCREATE TABLEX t (x);\n")
    assert appliance.cli("migrate").returncode == 1
    path.write_text("-- Fix me.\n-- migrate:up\nCREATE TABLE t (x);\n", encoding="utf-8")

    result = appliance.cli("checksums", "--json")

    assert result.returncode == 0, result.stdout
    [row] = json.loads(result.stdout)
    assert (row["state"], row["match"]) == ("failed", True)
    assert row["on_disk"] != row["recorded"]
    assert cli_json(appliance, "validate")["checks"]["checksums"] == "ok"
    assert appliance.cli("migrate").returncode == 0
    path.write_text("-- Fix me.\n-- migrate:up\nCREATE TABLE t (y);\n", encoding="utf-8")
    assert appliance.cli("checksums").returncode == 4  # an applied file is still bound


def test_status_that_cannot_probe_the_writer_lock_says_so_in_one_line(appliance):
    """The lock is created 0600: a monitoring user who may read the journal got a
    PermissionError traceback. A symlink loop fails the same open for root too."""
    applied_appliance(appliance)
    lock = appliance.journal.with_name(appliance.journal.name + ".lock")
    lock.unlink()
    lock.symlink_to(lock.name)

    for args in (["status"], ["status", "--json"], ["status", "--verbose"]):
        result = appliance.cli(*args)
        expected = (
            f"FAILED: {lock}: cannot probe the writer lock: Too many levels of symbolic links\n"
        )
        assert assert_one_line_error(result, 4) == expected


@pytest.mark.parametrize(
    ("strategy", "error"),
    [
        (
            "def order(plan, migrations):\n    raise ValueError('nope')\n",
            "failed: ValueError: nope",
        ),
        ("def order(plan, migrations)\n", r"failed: SyntaxError: expected ':' \(.+, line 1\)"),
        ("import sys\n\ndef order(plan, migrations):\n    sys.exit(0)\n", "failed: SystemExit: 0"),
        ("ORDER = []\n", r"has no order\(plan, migrations\)"),
    ],
    ids=["raises", "syntax error", "sys.exit(0)", "no order"],
)
def test_a_custom_strategy_that_fails_is_one_line_naming_its_file(appliance, strategy, error):
    """The vendor's _strategy.py ended migrate in a traceback, or with sys.exit(0) in a
    silent exit 0 having applied nothing."""
    appliance.configure('strategy = "custom"\n')
    create_table_migration(appliance, V1, "alpha")
    path = appliance.write("_strategy.py", strategy)

    result = appliance.cli("migrate")

    assert re.fullmatch(
        f"FAILED: {re.escape(str(path))}: {error}\n", assert_one_line_error(result, 2)
    )
    assert cli_json(appliance, "list")[0]["state"] == "pending"
    finished = cli_json(appliance, "history")[-1]
    assert (finished["kind"], finished["outcome"]) == ("RunFinished", "failed")


def verify_that_exits(app: Appliance) -> Path:
    """Write a database migration whose `verify` calls sys.exit(0)."""
    return app.write(
        f"{V1}_checked.py",
        """\
        \"\"\"Checked.\"\"\"
        import sys

        component = "database"


        def up(ctx, db):
            db.execute("CREATE TABLE alpha (id INTEGER PRIMARY KEY)")


        def verify(ctx, db):
            sys.exit(0)
        """,
    )


def test_a_verify_that_calls_sys_exit_is_a_failed_check_not_a_silent_exit_0(appliance):
    """It ended migrate with exit 0 mid-validate_after: no RunFinished, the migration left
    "running" for recovery, and nothing said so."""
    appliance.configure("validate_after = true\n")
    verify_that_exits(appliance)

    result = appliance.cli("migrate")

    expected = f"FAILED: validate_after failed: verify {V1}: SystemExit: 0\n"
    assert result.returncode == 4, result.stderr
    assert result.stderr.endswith(expected)
    assert cli_json(appliance, "list")[0]["state"] == "applied"
    finished = cli_json(appliance, "history")[-1]
    assert (finished["kind"], finished["outcome"]) == ("RunFinished", "failed")


def test_test_with_data_reports_a_verify_that_calls_sys_exit(appliance):
    """The rehearsal ended with exit 0 and no output at all."""
    verify_that_exits(appliance)

    result = appliance.cli("test", "--with-data")

    assert result.returncode == 4, result.stderr
    assert "    verify: SystemExit: 0\n" in result.stdout
    assert result.stdout.endswith("test --with-data: FAILED\n")
    assert not appliance.journal.exists()


def test_a_dry_run_names_the_operators_file_not_its_deleted_sandbox_copy(appliance):
    api = route_migration_on_a_malformed_api_json(appliance)

    result = appliance.cli("migrate", "--dry-run", "--json")

    report = json.loads(result.stdout)
    assert f"DecodeError: {api}: JSON is malformed" in report["error"]
    assert report["steps"][0]["error"].startswith(f"DecodeError: {api}: ")
    assert "flywall-sandbox" not in result.stdout + result.stderr


def test_confirm_after_the_window_closed_says_it_rolled_the_run_back(appliance):
    """confirm rolls an expired run back first; it then said only "no run awaits
    confirmation", as if nothing had happened, and left its own run without RunFinished."""
    appliance.configure('confirm_within = "1s"\n')
    create_table_migration(appliance, V1, "alpha")
    migrated = appliance.cli("migrate")
    closes = time.time() + 1  # the window opened before migrate exited
    assert migrated.returncode == 0, migrated.stderr
    [run_id] = re.findall(rf"\(run ({RUN_ID})\)", migrated.stdout)
    time.sleep(max(0.0, closes + 0.1 - time.time()))  # past the window, not a fixed wait

    result = appliance.cli("confirm")

    late = (
        f"too late to confirm: the window of run {run_id} had closed, so it was rolled back "
        "(see history)"
    )
    assert assert_one_line_error(result, 2) == f"FAILED: {late}\n"
    assert cli_json(appliance, "list")[0]["state"] == "rolled_back"
    finished = cli_json(appliance, "history")[-1]
    assert (finished["kind"], finished["outcome"], finished["error"]) == (
        "RunFinished",
        "failed",
        late,
    )


@pytest.mark.parametrize("kind", ["sql", "py"])
def test_a_migration_whose_file_is_gone_rolls_back_from_the_journals_copy(appliance, kind):
    """README: "The journal keeps every applied source, so a migration can still be rolled
    back after its file is gone." Its stored copy, named JOURNAL#FILE, was refused as a
    bad file name."""
    if kind == "sql":
        path = create_table_migration(appliance, V1, "alpha")
    else:
        path = appliance.write(
            f"{V1}_create_alpha.py",
            """\
            \"\"\"Create alpha.\"\"\"
            component = "database"


            def up(ctx, db):
                db.execute("CREATE TABLE alpha (id INTEGER PRIMARY KEY)")


            def down(ctx, db):
                db.execute("DROP TABLE alpha")
            """,
        )
    appliance.migrate()
    path.unlink()  # a firmware downgrade took the file away

    result = appliance.cli("rollback", V1)

    assert result.returncode == 0, result.stderr
    assert cli_json(appliance, "list")[0]["state"] == "rolled_back"
    with closing(apsw.Connection(str(appliance.state_db))) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alpha'").fetchall()


@pytest.mark.parametrize(
    "command",
    [["status"], ["migrate"], ["migrate", "--dry-run"], ["backup", "create"]],
    ids=" ".join,
)
def test_a_directory_in_place_of_state_db_is_one_line_naming_it_exit_4(appliance, command):
    create_table_migration(appliance, V1, "alpha")
    appliance.state_db.mkdir(parents=True)

    result = appliance.cli(*command)

    expected = f"FAILED: {appliance.state_db}: cannot open the database: unable to open database file\n"  # fmt: skip
    assert assert_one_line_error(result, 4) == expected
    assert cli_json(appliance, "history") == []


def test_a_migrations_folder_that_cannot_be_listed_is_one_line_naming_it(appliance):
    """A folder the user may not list was a PermissionError traceback; a symlink loop
    fails the same scandir for root too."""
    appliance.migrations_dir.rmdir()
    appliance.migrations_dir.symlink_to(appliance.migrations_dir.name)

    result = appliance.cli("list")

    expected = f"FAILED: {appliance.migrations_dir}: cannot list: Too many levels of symbolic links\n"  # fmt: skip
    assert assert_one_line_error(result, 2) == expected


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_a_migration_file_that_cannot_be_read_is_one_line_naming_it(appliance):
    """An unreadable file was a PermissionError traceback. /proc/self/mem is a regular
    file whose first page cannot be read (EIO), for root too."""
    create_table_migration(appliance, V1, "alpha")
    broken = appliance.migrations_dir / f"{V2}_unreadable.sql"
    broken.symlink_to("/proc/self/mem")

    # Issue 16.14 (was exit 2 from both): `list` shows it as broken beside the others,
    # and a writer refuses it as a pre-flight failure.
    listed = appliance.cli("list")
    assert (listed.returncode, listed.stderr) == (4, "")
    assert V1 in listed.stdout
    assert f"BROKEN      {broken}: cannot read: Input/output error\n" in listed.stdout
    result = appliance.cli("migrate")
    expected = f"FAILED: {broken}: cannot read: Input/output error; nothing was run"
    assert assert_one_line_error(result, 4).startswith(expected)
    assert cli_json(appliance, "history") == []


def test_a_journal_that_is_not_a_database_is_exit_4_everywhere_and_left_alone(appliance):
    """README: a tampered or corrupt journal is exit 4, whatever reads it."""
    appliance.journal.parent.mkdir(parents=True, exist_ok=True)
    appliance.journal.write_bytes(b"garbage, not SQLite\n" * 200)
    before = appliance.journal.read_bytes()

    for command in (("journal", "verify"), ("migrate",), ("history",)):
        result = appliance.cli(*command)

        assert result.returncode == 4, (command, result.stderr)
        assert result.stderr == (
            f"FAILED: {appliance.journal}: journal is corrupt: file is not a database; "
            "if it is damaged, get the box back from a backup: flywall migration journal "
            "recover-from-backup BACKUP_ID --yes (backup list names them)\n"
        )
    assert appliance.journal.read_bytes() == before


def answering(app: Appliance, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with `answer` on its stdin (a person at a prompt)."""
    return subprocess.run(
        [FLYWALL, "migration", "--root", str(app.root), *args],
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_backup_restore_of_an_unknown_id_fails_before_asking(appliance):
    create_table_migration(appliance, V1, "hosts")
    appliance.migrate()
    backups = appliance.root / "var/lib/flywall/migration-backups"

    for backup_id in ("no-such-backup", "../..", ".hidden"):
        result = answering(appliance, "y\n", "backup", "restore", backup_id)

        assert result.returncode == 2, result.stderr
        assert "Restore backup" not in result.stdout  # no question for what cannot be done
        assert result.stderr == f"FAILED: no backup {backup_id!r} in {backups}\n"


def test_backup_restore_asks_naming_when_the_backup_was_taken(appliance):
    create_table_migration(appliance, V1, "hosts")
    appliance.migrate()
    [listed] = cli_json(appliance, "backup", "list")

    declined = answering(appliance, "n\n", "backup", "restore", listed["backup_id"])

    assert declined.returncode == 1  # click's abort
    assert f"Restore backup {listed['backup_id']} (taken " in declined.stdout
    assert f"journal seq {listed['journal_seq']})" in declined.stdout
    assert not [e for e in cli_json(appliance, "history") if e["kind"] == "BackupRestored"]


def test_history_of_an_unknown_migration_is_exit_2_as_log_and_the_api_answer(appliance):
    create_table_migration(appliance, V1, "hosts")
    create_table_migration(appliance, V2, "zones")

    assert cli_json(appliance, "history", "--migration", V2) == []  # pending: no history yet
    appliance.migrate()
    typo = appliance.cli("history", "--migration", "1")

    assert typo.returncode == 2
    assert typo.stderr == "FAILED: unknown migration 1\n"
    (appliance.migrations_dir / f"{V1}_create_hosts.sql").unlink()  # gone, but journaled
    kinds = [e["kind"] for e in cli_json(appliance, "history", "--migration", V1)]
    assert kinds == ["MigrationStarted", "MigrationApplied"]


@pytest.mark.parametrize("to", ["\u00b2" * 12, "\u0662" * 12, "1" * 5000, "+202401010001"])
def test_rollback_to_takes_only_ascii_digits(appliance, to):
    """`isdigit()` let `²` and 5,000 digits through to `int()`: a traceback, not exit 2."""
    create_table_migration(appliance, V1, "hosts")
    appliance.migrate()

    result = appliance.cli("rollback", "--to", to)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"FAILED: --to {to[:64]!r}: expected a migration version (digits)\n")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("history", "--since", "\u00b2"), "'\u00b2' is neither a seq nor an ISO-8601 time"),
        (("history", "--until", "\u0663"), "'\u0663' is neither a seq nor an ISO-8601 time"),
        (("replay", "--until", "\u00b2"), "'\u00b2' is neither a seq nor an ISO-8601 time"),
        (("history", "--since", "1" * 5000), f"{'1' * 64!r}: no seq has 5000 digits"),
    ],
    ids=["superscript since", "Arabic-Indic until", "superscript replay", "5,000 digits"],
)
def test_a_seq_is_ascii_digits(appliance, args, error):
    """`isdigit()` took '²' (then int() failed: a traceback) and read '٣' as seq 3."""
    create_table_migration(appliance, V1, "hosts")
    appliance.migrate()

    result = appliance.cli(*args)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"FAILED: {error}\n"


def test_status_and_validate_warn_about_an_applied_migration_whose_file_is_gone(
    appliance: Appliance,
) -> None:
    """Issue 16.15: a deleted applied migration showed nowhere but `checksums`."""
    path = create_table_migration(appliance, "202401010001", "zones")
    appliance.migrate()
    path.unlink()

    status = appliance.cli("status")
    validate = appliance.cli("validate")

    line = (
        "202401010001 (202401010001_create_zones.sql) is applied but its file is gone; "
        "a rollback uses the journal's copy"
    )
    assert status.returncode == 0
    assert f"MISSING     {line}\n" in status.stdout
    assert validate.returncode == 0, validate.stdout  # a warning, not a failure
    assert "warn  missing files: 1 applied migration(s) without their file\n" in validate.stdout
    assert f"warn  {line}\n" in validate.stdout


FORCED_CONFIG = '''\
"""Set x."""
component = "config"


def up(ctx, config):
    config.set("x", 1)


def down(ctx, config):
    config.delete("x")
'''


def test_force_binds_a_pending_migration_to_its_file_so_migrate_goes_on(
    appliance: Appliance,
) -> None:
    """Issue 16.6: a forced "applied" had an empty checksum; every migrate then exited 4."""
    create_table_migration(appliance, "202401010001", "zones")
    create_table_migration(appliance, "202401010002", "rules")
    appliance.write("202401010003_set_x.py", FORCED_CONFIG)
    for version in ("202401010002", "202401010003"):
        forced = appliance.cli(
            "force", "--version", version, "--state", "applied", "--reason", "done by hand"
        )
        assert forced.returncode == 0, forced.stderr

    migrate = appliance.cli("migrate")

    assert migrate.returncode == 0, migrate.stderr
    listing = {row["version"]: row for row in json.loads(appliance.cli("list", "--json").stdout)}
    assert listing["202401010002"]["component"] == "database"
    assert listing["202401010003"]["checksum"]
    assert appliance.cli("validate").returncode == 0  # the marker follows the journal
    assert appliance.cli("checksums").returncode == 0


def test_force_refuses_a_version_with_no_file(appliance: Appliance) -> None:
    result = appliance.cli(
        "force", "--version", "202401019999", "--state", "applied", "--reason", "typo"
    )
    assert result.returncode == 2
    assert result.stderr == (
        "FAILED: migration 202401019999 has no file (and the journal never saw it run): "
        "nothing to force\n"
    )


def test_a_force_cut_before_its_marker_commits_is_named_and_finished_by_forcing_again(
    appliance: Appliance,
) -> None:
    create_table_migration(appliance, "202401010001", "zones")
    force = ("force", "--version", "202401010001", "--state", "applied", "--reason", "by hand")
    cut = appliance.cli(*force, env={"FLYWALL_CRASH_AT": "database-before-commit"})
    assert cut.returncode == -9, cut.stderr

    validate = appliance.cli("validate")
    assert validate.returncode == 4
    assert "the journal shows 202401010001 applied but its marker is missing" in validate.stdout

    assert appliance.cli(*force).returncode == 0
    assert appliance.cli("validate").returncode == 0
    assert appliance.cli("migrate").returncode == 0


def test_accept_drift_is_accepted_by_validate_before_too_and_journaled(
    appliance: Appliance,
) -> None:
    """Issue 16.7: every drift error recommends --accept-drift, which validate_before refused."""
    import apsw

    create_table_migration(appliance, "202401010001", "zones")
    appliance.migrate()
    db = apsw.Connection(str(appliance.workspace().paths.state_db))
    db.execute("CREATE TABLE operator_notes (x)")  # a change behind the journal's back
    db.close()
    create_table_migration(appliance, "202401010002", "rules")

    refused = appliance.cli("migrate")
    accepted = appliance.cli("migrate", "--accept-drift")

    assert refused.returncode == 4
    assert "--accept-drift" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    history = json.loads(appliance.cli("history", "--json").stdout)
    started = [e for e in history if e["kind"] == "RunStarted"][-1]
    assert started["accepted_drift"]
    assert "schema fingerprint" in started["accepted_drift"][0]
    checked = [e for e in history if e["kind"] == "ValidationPerformed"]
    assert checked[-2]["checks"]["drift"].startswith("ok (accepted for this run: ")
    assert appliance.cli("validate").returncode == 0  # the run recorded the schema it left


def test_repair_binds_an_edited_applied_migration_to_its_file(appliance: Appliance) -> None:
    """Issue 16.8: an intentional edit to an applied migration had no way forward."""
    path = create_table_migration(appliance, "202401010001", "zones")
    appliance.migrate()
    before = json.loads(appliance.cli("checksums", "--json").stdout)[0]["recorded"]
    path.write_text(path.read_text() + "-- a comment the vendor added later\n")
    assert appliance.cli("migrate").returncode == 4  # the edit is refused, as before

    repaired = appliance.cli("repair", "202401010001", "--reason", "comment only")

    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout.startswith("repaired 202401010001: bound to its file as it is now")
    row = json.loads(appliance.cli("checksums", "--json").stdout)[0]
    assert (row["match"], row["repaired_from"]) == (True, before)
    assert row["recorded"] == row["on_disk"] != before
    assert " repaired " in appliance.cli("checksums").stdout
    history = json.loads(appliance.cli("history", "--json", "--kind", "MigrationRepaired").stdout)
    assert [(e["checksum_before"], e["reason"]) for e in history] == [(before, "comment only")]
    assert appliance.cli("validate").returncode == 0  # the marker took the new checksum
    create_table_migration(appliance, "202401010002", "rules")
    assert appliance.cli("migrate").returncode == 0
    again = appliance.cli("repair", "202401010001", "--reason", "again")
    assert (again.returncode, again.stderr) == (
        2,
        "FAILED: migration 202401010001 is unchanged: nothing to repair\n",
    )
