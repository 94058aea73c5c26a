"""Getting a box back from a damaged journal (issue 16.16): backups hold a consistent copy
of the journal, and `journal recover-from-backup` installs it and restores the targets.

Real appliance trees in tmp_path, the CLI as real subprocesses, real damage to the file:
truncated mid-file, a page overwritten with garbage, the -wal of a journal with unflushed
events deleted. The kill test cuts the recovery at every crash point it reaches.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING

import apsw
import blake3
import msgspec
import pytest
from conftest import Appliance, create_table_migration
from crashkit import integrity_ok, killed, sample

from flywall.core import commands
from flywall.core.services import backup, rescue
from flywall.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

READERS = [("status",), ("list",), ("history",), ("validate",), ("journal", "verify")]
WRITERS = [("migrate",), ("backup", "create"), ("recover",)]
SOUND_BUT_SHORT = [
    ("list",),
    ("history",),
    ("journal", "verify"),
    ("backup", "create"),
    ("recover",),
]
"""With a lost -wal the journal is sound, only behind state.db: drift checks say so."""


def backed_up(app: Appliance) -> str:
    """One migration applied and backed up, a second applied after the backup: the id."""
    create_table_migration(app, "202401010001", "peers")
    app.migrate()
    made = commands.backup_create(app.workspace())  # setup: in this process
    create_table_migration(app, "202401010002", "routes")
    app.migrate()
    return made.backup_id


def truncate(app: Appliance) -> None:
    os.truncate(app.journal, app.journal.stat().st_size // 2)


def garbage_page(app: Appliance) -> None:
    """Overwrite the events table's root page with random bytes."""
    db = apsw.Connection(str(app.journal))
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with app.journal.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(os.urandom(size))


def lost_wal(app: Appliance) -> None:
    """Cut a run dead (its events only in the -wal, never checkpointed), then delete the -wal."""
    create_table_migration(app, "202401010003", "hosts")
    cut = app.cli("migrate", env={"FLYWALL_CRASH_AT": "before-snapshot"})
    assert killed(cut), cut.stderr
    wal = app.journal.with_name(app.journal.name + "-wal")
    assert wal.stat().st_size > 0
    wal.unlink()


DAMAGE: dict[str, Callable[[Appliance], None]] = {
    "truncated": truncate,
    "garbage page": garbage_page,
    "lost wal": lost_wal,
}


def manifest_of(app: Appliance, backup_id: str) -> backup.Manifest:
    return backup.read_manifest(app.workspace(), backup_id)


def test_a_backup_holds_a_consistent_copy_of_the_journal_and_its_head(
    appliance: Appliance,
) -> None:
    backup_id = backed_up(appliance)
    manifest = manifest_of(appliance, backup_id)
    assert manifest.journal is not None
    copy = appliance.root / "var/lib/flywall/migration-backups" / backup_id / "journal.db"
    assert blake3.blake3(copy.read_bytes()).hexdigest() == manifest.journal.digest
    assert copy.read_bytes()[18:20] == b"\x01\x01"  # a plain file: no -wal needed
    assert integrity_ok(copy)
    with Journal.open_existing(copy) as journal:
        seq, head = journal.verify()[:2]
    assert (seq, head.hex()) == (manifest.journal_head_seq, manifest.journal_head_hash)
    with Journal.open_existing(appliance.journal) as live:  # the live journal agrees there
        (row,) = live.read(after=seq - 1, until=seq)
    assert row.hash == head
    assert (copy.stat().st_mode & 0o777) == 0o600


def test_a_run_backup_holds_the_journal_too(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "peers")
    assert appliance.cli("migrate").returncode == 0
    (listed,) = json.loads(appliance.cli("backup", "list", "--json").stdout)
    assert manifest_of(appliance, listed["backup_id"]).journal is not None
    assert listed["ok"] is True


@pytest.mark.parametrize("damage", DAMAGE)
def test_every_command_on_a_damaged_journal_names_it_and_the_way_out(
    appliance: Appliance, damage: str
) -> None:
    backed_up(appliance)
    DAMAGE[damage](appliance)
    for args in READERS + WRITERS:
        result = appliance.cli(*args)
        if damage == "lost wal" and args in SOUND_BUT_SHORT:
            continue  # a sound but shorter journal: what they say is true, if old
        assert result.returncode == 4, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        out = result.stdout + result.stderr
        assert "journal recover-from-backup" in out, (args, out)
        if damage != "lost wal":
            (line,) = result.stderr.splitlines()
            assert str(appliance.journal) in line


@pytest.mark.parametrize("damage", DAMAGE)
def test_recovery_gets_the_box_back_and_migrate_reapplies_what_is_newer(
    appliance: Appliance, damage: str
) -> None:
    backup_id = backed_up(appliance)
    DAMAGE[damage](appliance)
    damaged_digest = blake3.blake3(appliance.journal.read_bytes()).hexdigest()
    result = appliance.cli("journal", "recover-from-backup", backup_id, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["damaged_digest"] == damaged_digest
    kept = appliance.journal.parent / report["damaged"]
    assert kept.name.startswith("migration-journal.db.damaged-")
    assert blake3.blake3(kept.read_bytes()).hexdigest() == damaged_digest
    assert not rescue.intent_path(appliance.journal).exists()

    for args in [("status",), ("validate",), ("journal", "verify")]:
        ok = appliance.cli(*args)
        assert ok.returncode == 0, (args, ok.stdout, ok.stderr)
    pending = json.loads(appliance.cli("list", "--pending", "--json").stdout)
    assert "202401010002" in [row["version"] for row in pending]
    assert appliance.cli("migrate").returncode == 0
    events = commands.history(appliance.workspace())
    (recovered,) = [e for e in events if e["kind"] == "JournalRecovered"]
    assert recovered["backup_id"] == backup_id
    assert recovered["damaged_path"] == str(kept)
    assert recovered["damaged_digest"] == damaged_digest
    assert recovered["reason"]
    assert appliance.cli("validate").returncode == 0


def test_without_yes_and_no_terminal_it_refuses_in_one_line(appliance: Appliance) -> None:
    backup_id = backed_up(appliance)
    truncate(appliance)
    result = appliance.cli("journal", "recover-from-backup", backup_id)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "--yes" in line


def test_a_sound_journal_is_replaced_only_with_force(appliance: Appliance) -> None:
    backup_id = backed_up(appliance)
    before = appliance.journal.read_bytes()
    result = appliance.cli("journal", "recover-from-backup", backup_id, "--yes")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "--force" in line
    assert str(appliance.journal) in line
    assert appliance.journal.read_bytes() == before
    forced = appliance.cli("journal", "recover-from-backup", backup_id, "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert appliance.cli("journal", "verify").returncode == 0


def test_a_backup_without_a_journal_copy_is_refused(appliance: Appliance) -> None:
    backup_id = backed_up(appliance)
    folder = appliance.root / "var/lib/flywall/migration-backups" / backup_id
    old = msgspec.json.decode((folder / "manifest.json").read_bytes())
    del old["journal"], old["journal_head_seq"], old["journal_head_hash"]
    (folder / "manifest.json").write_bytes(msgspec.json.encode(old))
    truncate(appliance)
    result = appliance.cli("journal", "recover-from-backup", backup_id, "--yes")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "no copy of the journal" in line


def template(tmp_path: Path) -> tuple[Appliance, str, list[str]]:
    """A backed-up appliance with a truncated journal, the backup id, the recovery's points."""
    app = Appliance(tmp_path / "template")
    app.configure()
    backup_id = backed_up(app)
    truncate(app)
    probe = Appliance(tmp_path / "probe")
    shutil.copytree(app.root, probe.root)
    listing = tmp_path / "points"
    result = probe.cli(
        "journal",
        "recover-from-backup",
        backup_id,
        "--yes",
        env={"FLYWALL_CRASH_LIST": str(listing)},
    )
    assert result.returncode == 0, result.stderr
    points = [line.replace(" ", ":") for line in listing.read_text().splitlines()]
    return app, backup_id, list(dict.fromkeys(points))


@pytest.mark.torture
def test_a_cut_anywhere_leaves_a_journal_and_a_rerun_finishes(tmp_path: Path) -> None:
    """Killed at each crash point (a sample by default, crashkit.sample): the journal exists,
    every other command names the way out (or the recovery had finished), and a rerun
    finishes it exactly once."""
    template_app, backup_id, points = template(tmp_path)
    expected = {"rescue-intent-written", "rescue-damaged-kept", "rescue-journal-installed"}
    assert expected | {"rescue-journaled", "restore-state-done"} <= {
        p.split(":")[0] for p in points
    }
    damaged = blake3.blake3(template_app.journal.read_bytes()).hexdigest()
    chosen = sample(points)
    for point in chosen:
        app = Appliance(tmp_path / point.replace(":", "-"))
        shutil.copytree(template_app.root, app.root)
        cut = app.cli(
            "journal", "recover-from-backup", backup_id, "--yes", env={"FLYWALL_CRASH_AT": point}
        )
        assert killed(cut), (point, cut.stderr)
        assert app.journal.exists(), point  # never a box with no journal
        status = app.cli("status")
        if point.startswith("rescue-finished"):
            assert status.returncode == 0, (point, status.stderr)
        else:
            assert status.returncode == 4, (point, status.stdout, status.stderr)
            assert "recover-from-backup" in status.stderr, (point, status.stderr)
            rerun = app.cli("journal", "recover-from-backup", backup_id, "--yes", "--json")
            assert rerun.returncode == 0, (point, rerun.stderr)
            assert json.loads(rerun.stdout)["damaged_digest"] == damaged, point
        (kept,) = app.journal.parent.glob("migration-journal.db.damaged-*[0-9Z]")
        assert blake3.blake3(kept.read_bytes()).hexdigest() == damaged, point
        for args in [("status",), ("validate",), ("journal", "verify")]:
            ok = app.cli(*args)
            assert ok.returncode == 0, (point, args, ok.stdout, ok.stderr)
        events = commands.history(app.workspace())
        assert [e["kind"] for e in events].count("JournalRecovered") == 1, point
        assert app.cli("migrate").returncode == 0, point
    finished = [p for p in chosen if p.startswith("rescue-finished")]
    print(
        f"\nrecover-from-backup: kills at {len(chosen)} of {len(points)} crash points, {finished}"
    )
