"""Issue 14 item 7: a run's backup of flywall.hcl is also a Flywall UI backup, pinned."""

from __future__ import annotations

import json
import re
import signal
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Appliance

V1 = "202401010001"

ADD_EBPF = '''\
"""Add the ebpf block."""
component = "config"


def up(ctx, config):
    config.body.add_block("ebpf", enabled=False)


def down(ctx, config):
    config.body.remove_block(config.body.block("ebpf"))
'''

NAME = re.compile(r"config\.(\d+)\.(\d{8}-\d{6})\.hcl")


def ui_backups(app: Appliance) -> list[str]:
    folder = app.root / "etc/flywall/backups"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_migrate_run_writes_the_config_as_a_pinned_numbered_ui_backup(appliance):
    appliance.write(f"{V1}_add_ebpf.py", ADD_EBPF)
    before = appliance.config.read_bytes()

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr
    [backup, meta] = ui_backups(appliance)
    match = NAME.fullmatch(backup)
    assert match is not None
    assert match[1] == "1"
    assert meta == backup.removesuffix(".hcl") + ".meta.json"
    folder = appliance.root / "etc/flywall/backups"
    assert (folder / backup).read_bytes() == before  # the config as it was before the run
    assert (folder / backup).stat().st_mode & 0o777 == 0o600
    data = json.loads((folder / meta).read_text())
    run_id = json.loads(appliance.cli("status", "--json").stdout)["last_run"]["run_id"]
    assert data == {
        "version": 1,
        "timestamp": data["timestamp"],
        "description": f"flywall-migration: before migrate run {run_id}",
        "path": f"/etc/flywall/backups/{backup}",  # as the box names it, without --root
        "size": len(before),
        "is_auto": True,
        "pinned": True,
        "schema_version": "1.0",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["timestamp"])


def test_ui_backups_are_numbered_after_the_ones_flywall_already_has(appliance):
    folder = appliance.root / "etc/flywall/backups"
    folder.mkdir()
    (folder / "config.7.20260101-000000.hcl").write_text("old\n")

    assert appliance.cli("backup", "create").returncode == 0

    [meta] = [n for n in ui_backups(appliance) if n.startswith("config.8.") and "meta" in n]
    description = json.loads((folder / meta).read_text())["description"]
    assert re.fullmatch(r"flywall-migration: operator: backup create \(run \S+\)", description)


def test_a_run_with_backup_before_off_writes_no_ui_backup(appliance):
    appliance.configure("backup_before = false\n")
    appliance.write(f"{V1}_add_ebpf.py", ADD_EBPF)

    appliance.migrate()

    assert ui_backups(appliance) == []


@pytest.mark.parametrize("point", ["ui-backup-config-written", "ui-backup-completed"])
def test_a_cut_while_writing_the_ui_backup_changes_no_config_and_the_rerun_completes(
    appliance, point
):
    appliance.write(f"{V1}_add_ebpf.py", ADD_EBPF)
    before = appliance.config.read_bytes()

    killed = appliance.cli("migrate", env={"FLYWALL_CRASH_AT": point})

    assert killed.returncode == -signal.SIGKILL
    assert appliance.config.read_bytes() == before
    folder = appliance.root / "etc/flywall/backups"
    for name in ui_backups(appliance):  # never a half-written file under a final name
        if name.endswith(".meta.json"):
            json.loads((folder / name).read_text())
        elif not name.startswith("."):
            assert (folder / name).read_bytes() == before
    rerun = appliance.cli("migrate")
    assert rerun.returncode == 0, rerun.stderr
    assert b"ebpf" in appliance.config.read_bytes()
    metas = [n for n in ui_backups(appliance) if n.endswith(".meta.json")]
    assert metas
    assert all(json.loads((folder / n).read_text())["pinned"] for n in metas)
