"""Issue 14 item 2: never stamp a config version the firmware refuses (max_config_version)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from conftest import Appliance, create_table_migration

from flywall.core.model.errors import UsageError
from flywall.core.model.planner import check_config_ceiling, version_tuple

STAMP = '''\
"""Stamp the config with {version}."""
component = "config"
schema_version = "{version}"


def up(ctx, config):
    config.schema_version = schema_version


def down(ctx, config):
    config.schema_version = "1.0"
'''


@dataclass
class Node:
    version: str
    component: str
    schema_version: str | None
    depends_on: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.version}_stamp"


def test_versions_compare_as_numbers_with_trailing_zeros_dropped():
    assert version_tuple("1.1") == version_tuple("1.1.0") == (1, 1)
    assert version_tuple("1.10") > version_tuple("1.9")
    assert version_tuple("1.x") is None


def test_only_a_config_migration_above_the_ceiling_is_refused():
    fine = [
        Node("1", "config", "1.1"),
        Node("2", "config", None),  # version-neutral shape fix
        Node("3", "database", "2.0"),  # another component's own version
        Node("4", "state", "9.9"),
    ]
    check_config_ceiling(fine, "1.1")

    with pytest.raises(UsageError) as info:
        check_config_ceiling([*fine, Node("5", "config", "1.2")], "1.1")
    assert str(info.value) == (
        "migration 5_stamp sets the config's schema_version to '1.2', above max_config_version "
        "'1.1' (what the firmware accepts): refused before anything ran"
    )
    with pytest.raises(UsageError, match="'v2'"):
        check_config_ceiling([Node("6", "config", "v2")], "1.1")


@pytest.mark.parametrize("dry_run", [False, True])
def test_migrate_refuses_the_plan_before_anything_runs(appliance: Appliance, dry_run):
    create_table_migration(appliance, "202401010001", "alpha")
    appliance.write("202401010002_stamp_1_2.py", STAMP.format(version="1.2"))
    before = appliance.config.read_bytes()

    result = appliance.cli("migrate", *(["--dry-run"] if dry_run else []))

    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "FAILED: migration 202401010002_stamp_1_2 sets the config's schema_version to '1.2', "
        "above max_config_version '1.1' (what the firmware accepts): refused before anything "
        "ran\n"
    )
    assert appliance.config.read_bytes() == before
    assert not appliance.state_db.exists()  # the database migration before it did not run
    history = json.loads(appliance.cli("history", "--json").stdout)
    assert [e["kind"] for e in history if e["kind"].startswith("Migration")] == []


def test_a_target_below_the_offending_migration_still_runs(appliance: Appliance):
    create_table_migration(appliance, "202401010001", "alpha")
    appliance.write("202401010002_stamp_1_2.py", STAMP.format(version="1.2"))

    result = appliance.cli("migrate", "--target", "202401010001")

    assert result.returncode == 0, result.stderr


def test_a_higher_ceiling_in_settings_lets_it_run(appliance: Appliance):
    appliance.configure('max_config_version = "1.2"\n')
    appliance.write("202401010002_stamp_1_2.py", STAMP.format(version="1.2"))

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr
    assert 'schema_version = "1.2"' in appliance.config.read_text()
