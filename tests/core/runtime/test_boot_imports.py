"""A writer with nothing to do imports only what deciding that needs (issue 18.4).

Every boot runs `migrate`; most boots have nothing pending. Such a run still takes the
lock, checks the chain's tail, recovers, compares checksums and looks for drift, but it
runs no state step, no operator command and checks no signature, so the modules for
those (the record helper and its bucket format, subprocess, tempfile, signing) stay
unimported until a run needs them. Each probe is the real `flywall` entry point in a subprocess,
listing `sys.modules` as the process ends (its atexit handlers run before it exits).
"""

from __future__ import annotations

import os
import subprocess
import sys

import apsw
import pytest

from flywall.core import commands
from flywall.core.targets.database import MARKERS
from tests.conftest import Appliance, create_table_migration

NOT_FOR_A_NOOP = (
    "subprocess",  # core/appliance/daemon.py runs stop/start/check commands only
    "tempfile",  # daemon.check_config: a config migration with check_command
    "flywall.core.scripts.signing",  # require_signatures only
    "flywall.core.targets.records",  # a state step's record helper
    "flywall.core.targets.store",  # ... and Flywall's bucket format under it
    "flywall.core.services.backup",  # a backup, or the partials a cut one left
    "shutil",  # (and zlib, bz2, lzma under it) the backup service, the rehearsals
)

NOT_FOR_A_STATUS = (
    *NOT_FOR_A_NOOP,
    "transitions",  # the lifecycle machine: a read folds from the snapshot without it
    "flywall.core.services.validate",  # status shares only drift's missing-files rule
    "flywall.core.runtime.engine",  # a read runs nothing ...
    "flywall.core.runtime.recorder",  # ... and writes no event
)

PROBE = """\
import atexit, sys
def listed():
    print("MODULES", *sorted(sys.modules), file=sys.stderr)
atexit.register(listed)
sys.argv = ["flywall", *sys.argv[1:]]
from flywall.cli.fast import main
main()
"""


def run(app: Appliance, *args: str, memo: bool = True) -> tuple[str, int, set[str]]:
    """Run `flywall migration --root ROOT ARGS` (click, no fast path): stdout, exit, modules."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWALL_")}
    if not memo:
        env["FLYWALL_NO_STATUS_MEMO"] = "1"
    p = subprocess.run(
        [sys.executable, "-c", PROBE, "migration", "--root", str(app.root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    lines = p.stderr.splitlines()
    listed = [line for line in lines if line.startswith("MODULES ")]
    assert listed, p.stderr
    errors = "\n".join(line for line in lines if not line.startswith("MODULES "))
    return p.stdout + errors, p.returncode, set(listed[-1].split()[1:])


@pytest.fixture
def box(tmp_path) -> Appliance:
    app = Appliance(tmp_path / "appliance")
    app.configure()
    create_table_migration(app, "202401010001", "hosts")
    return app


def test_a_noop_migrate_imports_none_of_what_a_run_needs(box: Appliance) -> None:
    out, code, _ = run(box, "migrate")
    assert code == 0, out
    out, code, modules = run(box, "migrate")
    assert (out, code) == ("nothing to do\n", 0)
    assert sorted(set(NOT_FOR_A_NOOP) & modules) == []
    assert "flywall.core.services.drift" in modules  # it still looked for drift


def test_a_state_step_still_gets_its_record_helper(box: Appliance) -> None:
    """The lazy imports load when a run needs them: a Python state step uses `Records`."""
    box.write(
        "202401010002_fill_hosts.py",
        '''"""Fill hosts."""

component = "state"
depends_on = ["202401010001"]


def up(ctx, records):
    records.db.execute("INSERT INTO hosts (id, name) VALUES (1, 'gw')")


def down(ctx, records):
    records.db.execute("DELETE FROM hosts")
''',
    )
    out, code, modules = run(box, "migrate")
    assert code == 0, out
    assert "flywall.core.targets.records" in modules


def test_a_noop_migrate_still_removes_a_cut_backups_partial(box: Appliance) -> None:
    assert run(box, "migrate")[1] == 0
    backups = box.root / "var/lib/flywall/migration-backups"
    partial = backups / ".20240101T000000-abcdef.partial"
    (partial / "inside").mkdir(parents=True)
    kept = backups / ".keep"
    kept.write_text("not ours to remove", encoding="utf-8")
    out, code, modules = run(box, "migrate")
    assert (out, code) == ("nothing to do\n", 0)
    assert not partial.exists()
    assert kept.exists()
    assert "flywall.core.services.backup" in modules  # this boot needed the service


def test_a_noop_migrate_still_refuses_drift(box: Appliance) -> None:
    """The boot path's checks stay: a marker whose checksum is not the journal's is drift."""
    assert run(box, "migrate")[1] == 0
    db = apsw.Connection(str(box.root / "var/lib/flywall/state.db"))
    db.execute(f"UPDATE {MARKERS} SET checksum = 'edited' WHERE version = '202401010001'")
    db.close()
    out, code, modules = run(box, "migrate")
    assert code == 4, out
    assert "marker of 202401010001 has checksum edited" in out
    assert sorted(set(NOT_FOR_A_NOOP) & modules) == []


def test_rollback_and_reapply_still_work(box: Appliance) -> None:
    assert run(box, "migrate")[1] == 0
    out, code, _ = run(box, "rollback", "--steps", "1")
    assert code == 0, out
    out, code, _ = run(box, "migrate")
    assert code == 0, out
    assert "202401010001" in out


def test_status_with_the_memo_off_imports_neither_a_writer_nor_validate(box: Appliance) -> None:
    """The first status after a change (issue 18): what it shows, and no more, is loaded."""
    assert run(box, "migrate")[1] == 0
    out, code, modules = run(box, "status", memo=False)
    assert code == 0, out
    assert "1 applied" in out
    assert sorted(set(NOT_FOR_A_STATUS) & modules) == []
    assert "flywall.core.services.drift" in modules  # it still looked for drift


def test_status_still_names_an_applied_migration_whose_file_is_gone(box: Appliance) -> None:
    """The missing-files warning, now drift's, still shows in status (and in validate)."""
    assert run(box, "migrate")[1] == 0
    next(box.migrations_dir.glob("202401010001_*")).unlink()
    out, code, modules = run(box, "status", memo=False)
    assert code == 0, out
    assert "202401010001 (202401010001_create_hosts.sql) is applied but its file is gone" in out
    assert "flywall.core.services.validate" not in modules
    out, _, _ = run(box, "validate")
    assert "202401010001 (202401010001_create_hosts.sql) is applied but its file is gone" in out


def backups(box: Appliance) -> list[str]:
    return sorted(p.name for p in (box.root / "var/lib/flywall/migration-backups").iterdir())


def test_a_rollback_beside_one_backup_imports_no_backup_service(box: Appliance) -> None:
    """Retention never prunes the newest backup: with one, there is nothing to ask it."""
    assert run(box, "migrate")[1] == 0
    assert len(backups(box)) == 1
    out, code, modules = run(box, "rollback", "--steps", "1")
    assert code == 0, out
    assert "flywall.core.services.backup" not in modules
    assert "shutil" not in modules


def test_retention_still_prunes_at_the_end_of_a_rollback(box: Appliance) -> None:
    """With two backups past `backup_retention`, a rollback prunes the older (journaled)."""
    box.configure('backup_retention = "0s"\n')
    assert run(box, "migrate")[1] == 0
    create_table_migration(box, "202401010002", "leases")
    assert run(box, "migrate")[1] == 0
    kept = backups(box)[-1]  # the second migrate's own backup was the newest: kept
    assert len(backups(box)) == 1  # ... and the first one pruned by that run
    create_table_migration(box, "202401010003", "zones")
    box.configure("")  # a week's retention: the next migrate's backup prunes nothing
    assert run(box, "migrate")[1] == 0
    assert len(backups(box)) == 2
    box.configure('backup_retention = "0s"\n')

    out, code, modules = run(box, "rollback", "--steps", "1")

    assert code == 0, out
    assert "flywall.core.services.backup" in modules
    assert len(backups(box)) == 1
    assert kept not in backups(box)
    pruned = [
        e
        for e in commands.history(box.workspace())
        if e["kind"] == "BackupPruned" and e["reason"] == "retention"
    ]
    assert len(pruned) == 2  # one by the second migrate, one by the rollback
    assert pruned[-1]["backup_id"] == kept
