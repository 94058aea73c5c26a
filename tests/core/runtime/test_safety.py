"""The safety net: backups, auto_rollback (by down, else by backup), restore, prune, force."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import blake3
import pytest
from conftest import Appliance
from crashkit import data_digest, observe
from templates import build_demo

from flywall.core import commands
from flywall.core.model.errors import FlywallError, MigrationFailed
from flywall.core.services import backup

FAILING = '''\
"""Fails after changing things."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE t_boom (x)")
    raise RuntimeError("boom")


def down(ctx, db):
    db.execute("DROP TABLE t_boom")
'''

NO_DOWN = '''\
"""Adds a table and has no down: irreversible."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE one_way (x)")
'''


def digests(app: Appliance) -> dict[str, str]:
    """Byte digests of the file targets, and a logical digest of state.db (schema + rows)."""
    seen = observe(app.root)
    files = {
        name: blake3.blake3(path.read_bytes()).hexdigest()
        for name, path in (
            ("config", app.root / "etc/flywall/flywall.hcl"),
            ("api", app.root / "var/lib/flywall/api.json"),
        )
    }
    return {**files, "schema": seen.fingerprint, "rows": data_digest(app.state_db)}


def demo_appliance(tmp_path: Path, extra: str = "  auto_rollback = true\n") -> Appliance:
    build_demo(tmp_path / "box", "seed")
    app = Appliance(tmp_path / "box")
    settings = app.settings
    text = settings.read_text()
    settings.write_text(text.replace("migration {\n", "migration {\n" + extra, 1))
    return app


def test_auto_rollback_returns_every_target_to_its_bytes_before_the_run(tmp_path: Path) -> None:
    app = demo_appliance(tmp_path)
    app.write("299912310001_boom.py", FAILING)
    before = digests(app)
    shipped = [m.version for m in app.workspace().migrations if m.version < "299912310001"]
    assert len(shipped) >= 4, "the failing migration must sit after several others"

    with pytest.raises(MigrationFailed):
        commands.migrate(app.workspace())

    assert digests(app) == before
    states = observe(app.root).states
    assert states["299912310001"] == "failed"
    assert {states[v] for v in shipped} == {"rolled_back"}
    kinds = [e["kind"] for e in commands.history(app.workspace())]
    assert kinds[:3] == ["RunStarted", "ValidationPerformed", "BackupCreated"]
    assert kinds.count("MigrationRolledBack") == len(shipped)
    assert kinds[-1] == "RunFinished"


def test_a_migration_without_down_is_undone_by_restoring_the_runs_backup(tmp_path: Path) -> None:
    app = demo_appliance(tmp_path)
    app.write("299912310001_one_way.py", NO_DOWN)
    app.write("299912310002_boom.py", FAILING)
    before = digests(app)

    with pytest.raises(MigrationFailed):
        commands.migrate(app.workspace())

    assert digests(app) == before
    events = commands.history(app.workspace())
    via = {e["migration"]: e["via"] for e in events if e["kind"] == "MigrationRolledBack"}
    assert via["299912310001"] == "backup"
    assert any(e["kind"] == "BackupRestored" for e in events)
    assert observe(app.root).states["299912310001"] == "rolled_back"


def test_a_backup_that_cannot_be_written_stops_the_run_before_any_change(tmp_path: Path) -> None:
    app = demo_appliance(tmp_path, extra='  backup_location = "/blocked/backups"\n')
    (app.root / "blocked").write_text("a file where the backup folder should be")
    before = digests(app)

    result = app.cli("migrate")

    assert result.returncode == 1
    assert "backup to" in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert digests(app) == before
    assert set(observe(app.root).states.values()) <= {"pending"}


def test_a_full_disk_during_the_backup_stops_the_run_before_any_change(tmp_path: Path) -> None:
    """A real size-limited tmpfs as backup_location: SQLite's backup runs out of space."""
    app = demo_appliance(tmp_path, extra='  backup_location = "/small"\n')
    mount = app.root / "small"  # an absolute setting is placed under --root
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        before = digests(app)
        result = app.cli("migrate")
        assert result.returncode == 4, result.stderr  # pre-flight: stopped before any change
        assert f"pre-flight: {mount} has" in result.stderr
        assert "nothing was changed" in result.stderr
        assert digests(app) == before
        assert not any(mount.iterdir()), "a partial backup was left behind"
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_that_fills_while_the_backup_is_written_leaves_no_partial_backup(
    tmp_path: Path,
) -> None:
    """Simulated through the I/O layer: the manifest write hits ENOSPC."""
    import errno

    from flywall.core.runtime import fileio

    class FullDisk(fileio.IO):
        def write_new(self, path: Path, data: bytes, mode: int) -> None:
            if path.name == "manifest.json":
                raise OSError(errno.ENOSPC, "No space left on device")
            super().write_new(path, data, mode)

    app = demo_appliance(tmp_path, extra="")
    with pytest.raises(backup.BackupFailed, match="No space left on device; nothing was changed"):
        backup.create(app.workspace(), "b1", journal_seq=0, applied=[], reason="t", io=FullDisk())
    assert list((app.root / "var/lib/flywall/migration-backups").iterdir()) == []


def test_backup_restore_verifies_takes_a_safety_backup_and_journals_it(tmp_path: Path) -> None:
    app = demo_appliance(tmp_path, extra="")
    before = digests(app)
    commands.migrate(app.workspace())
    (first,) = commands.backup_list(app.workspace())

    result = app.cli("backup", "restore", first.backup_id, "--yes", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "completed"
    assert digests(app) == before
    assert set(observe(app.root).states.values()) == {"rolled_back"}
    backups = commands.backup_list(app.workspace())
    assert [b.backup_id for b in backups] == [first.backup_id, f"{report['run_id']}-safety"]
    assert all(b.ok for b in backups)


def test_a_corrupt_backup_is_refused_before_anything_is_restored(tmp_path: Path) -> None:
    app = demo_appliance(tmp_path, extra="")
    commands.migrate(app.workspace())
    (first,) = commands.backup_list(app.workspace())
    (app.root / "var/lib/flywall/migration-backups" / first.backup_id / "api.json").write_text("{}")
    migrated = digests(app)

    result = app.cli("backup", "restore", first.backup_id, "--yes")

    assert result.returncode == 4
    assert "api.json: digest differs from the manifest" in result.stderr
    assert digests(app) == migrated


def test_prune_keeps_the_newest_and_journals_each_removal(tmp_path: Path) -> None:
    app = demo_appliance(tmp_path, extra="")
    app.write("299912310001_one_way.py", NO_DOWN)
    commands.migrate(app.workspace(), target="202312010003")
    commands.migrate(app.workspace())
    assert len(commands.backup_list(app.workspace())) == 2

    removed = commands.backup_prune(app.workspace(), keep=1)

    left = commands.backup_list(app.workspace())
    assert len(removed) == 1
    assert len(left) == 1
    assert left[0].backup_id not in removed
    pruned = [e for e in commands.history(app.workspace()) if e["kind"] == "BackupPruned"]
    assert [e["backup_id"] for e in pruned] == removed
    with pytest.raises(FlywallError):
        commands.backup_prune(app.workspace(), keep=0)


def test_force_needs_a_reason_and_is_journaled_with_its_actor(appliance: Appliance) -> None:
    appliance.write("202401010001_t.py", NO_DOWN)
    refused = appliance.cli("force", "--version", "202401010001", "--state", "applied")
    assert refused.returncode == 2

    done = appliance.cli(
        "force", "--version", "202401010001", "--state", "applied", "--reason", "applied by hand"
    )

    assert done.returncode == 0, done.stderr
    (forced,) = [e for e in commands.history(appliance.workspace()) if e["kind"] == "StateForced"]
    assert forced["reason"] == "applied by hand"
    assert forced["from_state"] == "pending"
    assert forced["actor"]["pid"] > 0
    assert observe(appliance.root).states == {"202401010001": "applied"}


def test_debug_shows_a_migrations_file_checksums_state_and_events(tmp_path: Path) -> None:
    app = demo_appliance(tmp_path, extra="")
    commands.migrate(app.workspace())
    result = app.cli("debug", "202312010002", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["state"] == "applied"
    assert info["checksum_on_disk"] == info["checksum_recorded"]
    assert "CREATE TABLE IF NOT EXISTS dns_cache" in info["sql"]["up"]
    assert [e["kind"] for e in info["events"]][:2] == ["MigrationStarted", "MigrationApplied"]
    assert info["backups"]


SLOW = '''\
"""Runs far longer than the timeout allows."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE started (x)")
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
        "SELECT count(*) FROM n"
    ).fetchall()
'''


def test_a_migration_over_its_timeout_is_interrupted_and_undone(appliance: Appliance) -> None:
    appliance.configure('timeout = "300ms"\n')
    appliance.write("202401010001_slow.py", SLOW)

    result = appliance.cli("migrate")

    assert result.returncode == 1
    assert "failed during timeout: Timeout: exceeded 0.3 s" in result.stderr
    (failed,) = [
        e for e in commands.history(appliance.workspace()) if e["kind"] == "MigrationFailed"
    ]
    assert failed["phase"] == "timeout"
    assert observe(appliance.root).fingerprint == "0" * 64  # no table left


def test_an_unconfirmed_run_is_rolled_back_when_its_window_closes(tmp_path: Path) -> None:
    """confirm_within: the deadline is journaled, so it holds across a reboot."""
    import freezegun

    app = demo_appliance(tmp_path, extra='  confirm_within = "10m"\n')
    before = digests(app)
    with freezegun.freeze_time("2026-03-01 10:00:00") as clock:
        run = commands.migrate(app.workspace())
        assert run.confirm_by == "2026-03-01T10:10:00Z"
        status = commands.status(app.workspace())
        assert status.awaiting_confirmation == {run.run_id: "2026-03-01T10:10:00.000Z"}
        clock.move_to("2026-03-01 10:09:59")
        commands.recover(app.workspace())  # still inside the window: nothing happens
        assert set(observe(app.root).states.values()) == {"applied"}
        clock.move_to("2026-03-01 10:10:01")
        commands.recover(app.workspace())  # what the next boot runs
    assert set(observe(app.root).states.values()) == {"rolled_back"}
    assert digests(app) == before
    kinds = [e["kind"] for e in commands.history(app.workspace())]
    assert "ConfirmationExpired" in kinds


def test_a_confirmed_run_is_kept(tmp_path: Path) -> None:
    import freezegun

    app = demo_appliance(tmp_path, extra='  confirm_within = "10m"\n')
    with freezegun.freeze_time("2026-03-01 10:00:00") as clock:
        commands.migrate(app.workspace())
        confirmed = commands.confirm(app.workspace())  # in-process: the clock is frozen
        assert len(confirmed.done) == 1
        clock.move_to("2026-03-02 10:00:00")
        commands.recover(app.workspace())
        assert commands.status(app.workspace()).awaiting_confirmation == {}
    assert set(observe(app.root).states.values()) == {"applied"}
    again = app.cli("confirm")
    assert again.returncode == 2
    assert "no run awaits confirmation" in again.stderr


def test_migrations_reapplied_after_an_expired_window_are_not_undone_again(tmp_path: Path) -> None:
    import freezegun

    app = demo_appliance(tmp_path, extra='  confirm_within = "10m"\n')
    with freezegun.freeze_time("2026-03-01 10:00:00") as clock:
        commands.migrate(app.workspace())
        clock.move_to("2026-03-01 11:00:00")
        commands.recover(app.workspace())
        assert set(observe(app.root).states.values()) == {"rolled_back"}
        commands.migrate(app.workspace())
        commands.confirm(app.workspace())
        clock.move_to("2026-03-01 12:00:00")
        commands.recover(app.workspace())
    assert set(observe(app.root).states.values()) == {"applied"}


def three_tables(app: Appliance) -> None:
    for i, name in enumerate(("alpha", "beta", "gamma"), start=1):
        app.write(
            f"20240101000{i}_{name}.sql",
            f"-- migrate:up\nCREATE TABLE {name} (id INTEGER PRIMARY KEY);\n"
            f"-- migrate:down\nDROP TABLE {name};\n",
        )


def test_the_full_strategy_applies_all_database_migrations_in_one_transaction(
    appliance: Appliance,
) -> None:
    appliance.configure('strategy = "full"\n')
    three_tables(appliance)
    appliance.migrate()
    assert set(observe(appliance.root).states.values()) == {"applied"}
    fingerprints = {
        e["fingerprint_after"]
        for e in commands.history(appliance.workspace())
        if e["kind"] == "MigrationApplied"
    }
    assert len(fingerprints) == 1, "one transaction: one schema after all of them"


def test_under_the_full_strategy_one_failure_undoes_them_all(appliance: Appliance) -> None:
    appliance.configure('strategy = "full"\n')
    three_tables(appliance)
    appliance.write("202401010004_boom.py", FAILING)
    empty = "0" * 64  # the fingerprint of a schema with no table

    result = appliance.cli("migrate")

    assert result.returncode == 1
    assert observe(appliance.root).fingerprint == empty
    assert set(observe(appliance.root).states.values()) == {"failed"}
    errors = {
        e["migration"]: e["error_type"]
        for e in commands.history(appliance.workspace())
        if e["kind"] == "MigrationFailed"
    }
    assert errors == {
        "202401010001": "RolledBack",
        "202401010002": "RolledBack",
        "202401010003": "RolledBack",
        "202401010004": "RuntimeError",
    }


def test_the_custom_strategy_runs_the_vendors_order(appliance: Appliance) -> None:
    appliance.configure('strategy = "custom"\n')
    three_tables(appliance)
    appliance.write(
        "_strategy.py", "def order(plan, migrations):\n    return sorted(plan, reverse=True)\n"
    )
    appliance.migrate()
    started = [
        e["migration"]
        for e in commands.history(appliance.workspace())
        if e["kind"] == "MigrationStarted"
    ]
    assert started == ["202401010003", "202401010002", "202401010001"]


def test_a_custom_order_that_breaks_a_dependency_is_refused(appliance: Appliance) -> None:
    appliance.configure('strategy = "custom"\n')
    three_tables(appliance)
    appliance.write(
        "202401010005_needs_alpha.py",
        '"""Needs alpha."""\ncomponent = "database"\ndepends_on = ["202401010001"]\n\n\n'
        "def up(ctx, db):\n    pass\n",
    )
    appliance.write(
        "_strategy.py", "def order(plan, migrations):\n    return sorted(plan, reverse=True)\n"
    )
    result = appliance.cli("migrate")
    assert result.returncode == 2
    assert "order() runs 202401010005 before 202401010001" in result.stderr


BAD_VERIFY = '''\
"""Creates a table its own verify then finds wanting."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE checked (x)")


def down(ctx, db):
    db.execute("DROP TABLE checked")


def verify(ctx, db):
    (count,) = db.execute("SELECT count(*) FROM checked").fetchone()
    if count == 0:
        raise AssertionError("checked is empty")
'''


def test_a_failed_validate_after_with_auto_rollback_rolls_the_run_back(
    appliance: Appliance,
) -> None:
    appliance.configure("auto_rollback = true\n")
    appliance.write("202401010001_checked.py", BAD_VERIFY)

    result = appliance.cli("migrate")

    assert result.returncode == 4
    assert "validate_after failed: verify 202401010001: AssertionError: checked is empty" in (
        result.stderr
    )
    assert observe(appliance.root).states == {"202401010001": "rolled_back"}
    checks = [
        e for e in commands.history(appliance.workspace()) if e["kind"] == "ValidationPerformed"
    ]
    assert [(c["phase"], c["ok"]) for c in checks] == [
        ("validate_before", True),
        ("validate_after", False),
    ]


def test_an_irreversible_migration_rolls_back_only_by_backup_and_only_with_yes(
    tmp_path: Path,
) -> None:
    app = demo_appliance(tmp_path, extra="")
    commands.migrate(app.workspace())
    before = digests(app)
    app.write("299912310001_one_way.py", NO_DOWN)
    commands.migrate(app.workspace())

    refused = app.cli("rollback", "299912310001")
    assert refused.returncode == 2
    assert "299912310001 is irreversible (no down); restoring backup" in refused.stderr
    assert "run again with --yes" in refused.stderr

    done = app.cli("rollback", "299912310001", "--yes")
    assert done.returncode == 0, done.stderr
    assert digests(app) == before
    assert observe(app.root).states["299912310001"] == "rolled_back"
