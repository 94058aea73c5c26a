"""`enabled = false` in migration.hcl (issue 16 item 4), through the real CLI and API.

Commands that would apply, roll back or rebind migrations refuse with exit 2 and one line
naming the file and line; reading commands, backups, `confirm` and `journal verify` still
work; `recover` (the boot unit) still finishes interrupted work but applies nothing, even
with `auto_migrate = true`.
"""

from __future__ import annotations

from apiserver import serving
from conftest import Appliance, create_table_migration

from flywall.core import commands

V1, V2 = "202401010001", "202401010002"
REFUSAL = "FAILED: migrations are disabled in etc/flywall/migration.hcl (line 3: enabled = false)\n"


def events(app: Appliance) -> int:
    if not app.journal.exists():
        return 0
    return len(commands.history(app.workspace()))  # observed in this process


def test_writing_commands_refuse_naming_the_file_and_line_and_journal_nothing(appliance):
    create_table_migration(appliance, V1, "zones")
    appliance.migrate()
    create_table_migration(appliance, V2, "rules")
    appliance.configure("enabled = false\n")
    before = events(appliance)

    for command in (
        ["migrate"],
        ["migrate", "--target", V2],
        ["rollback", V1],
        ["rollback", "--steps", "1"],
        ["force", "--version", V2, "--state", "applied", "--reason", "by hand"],
        ["repair", V1, "--reason", "comment fixed"],
    ):
        result = appliance.cli(*command)
        assert (result.returncode, result.stderr) == (2, REFUSAL), command

    assert events(appliance) == before
    assert appliance.cli("list", "--json").returncode == 0
    states = {r.version: r.state for r in commands.list_migrations(appliance.workspace())}
    assert states == {V1: "applied", V2: "pending"}


def test_reading_commands_backups_confirm_and_journal_verify_still_work(appliance):
    create_table_migration(appliance, V1, "zones")
    appliance.configure('confirm_within = "10m"\n')
    appliance.migrate()
    appliance.configure('enabled = false\nconfirm_within = "10m"\n')

    for command in (
        ["status"],
        ["list"],
        ["history"],
        ["validate"],
        ["verify", "--data"],
        ["checksums"],
        ["journal", "verify"],
        ["backup", "create"],
        ["backup", "list"],
        ["confirm"],
        ["migrate", "--dry-run"],
    ):
        result = appliance.cli(*command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)


def test_recover_with_auto_migrate_applies_nothing_when_disabled_and_says_so(appliance):
    create_table_migration(appliance, V1, "zones")
    appliance.configure("enabled = false\nauto_migrate = true\n")

    result = appliance.cli("recover")

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "migrations are disabled in etc/flywall/migration.hcl (line 3: enabled = false): "
        "1 pending left\nnothing to do\n"
    )
    states = {r.version: r.state for r in commands.list_migrations(appliance.workspace())}
    assert states == {V1: "pending"}


def test_recover_still_finishes_an_interrupted_migration_when_disabled(appliance):
    create_table_migration(appliance, V1, "zones")
    create_table_migration(appliance, V2, "rules")
    cut = appliance.cli("migrate", env={"FLYWALL_CRASH_AT": "database-after-commit"})
    assert cut.returncode == -9, cut.stderr
    appliance.configure("enabled = false\nauto_migrate = true\n")

    result = appliance.cli("recover")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"recovered {V1}: applied (")
    assert lines[1] == (
        "migrations are disabled in etc/flywall/migration.hcl (line 3: enabled = false): "
        "1 pending left"
    )
    states = {r.version: r.state for r in commands.list_migrations(appliance.workspace())}
    assert states == {V1: "applied", V2: "pending"}
    assert appliance.cli("validate").returncode == 0


def test_the_api_answers_409_with_the_same_line_to_apply_and_rollback(appliance, tmp_path):
    create_table_migration(appliance, V1, "zones")
    appliance.migrate()
    create_table_migration(appliance, V2, "rules")
    appliance.configure("enabled = false\n")
    line = "migrations are disabled in etc/flywall/migration.hcl (line 3: enabled = false)"

    with serving(appliance, tmp_path / "serve.log") as server:
        apply = server.client.post("/api/migrations/apply", json={})
        rollback = server.client.post("/api/migrations/rollback", json={"version": V1})
        dry = server.client.post("/api/migrations/apply", json={"dry_run": True})

    assert (apply.status_code, apply.json()) == (409, {"error": line, "status": 409})
    assert (rollback.status_code, rollback.json()) == (409, {"error": line, "status": 409})
    assert dry.status_code == 200, dry.text
