"""`repair` cut between its durable MigrationRepaired and state.db's marker (issue 16.8).

The journal then binds the migration to the file's new checksum while the marker still
holds the old one: drift that `validate` must name, and that repairing again finishes.
"""

from __future__ import annotations

import json

from conftest import Appliance, create_table_migration

V1 = "202401010001"
REPAIR = ("repair", V1, "--reason", "comment only")


def test_a_repair_cut_before_its_marker_is_named_by_validate_and_finished_by_repairing_again(
    appliance: Appliance,
) -> None:
    path = create_table_migration(appliance, V1, "zones")
    appliance.migrate()
    old = json.loads(appliance.cli("checksums", "--json").stdout)[0]["recorded"]
    path.write_text(path.read_text() + "-- a comment the vendor added later\n")

    cut = appliance.cli(*REPAIR, env={"FLYWALL_CRASH_AT": "after-MigrationRepaired"})
    assert cut.returncode == -9, cut.stderr

    validate = appliance.cli("validate")
    assert validate.returncode == 4, validate.stdout
    new = json.loads(appliance.cli("checksums", "--json").stdout)[0]["on_disk"]
    assert f"marker of {V1} has checksum {old}, journal {new}" in validate.stdout

    again = appliance.cli(*REPAIR)
    assert again.returncode == 0, again.stderr
    assert appliance.cli("validate").returncode == 0
    history = json.loads(appliance.cli("history", "--json", "--kind", "MigrationRepaired").stdout)
    assert len(history) == 1  # the binding was journaled once; the rerun only finished it
    create_table_migration(appliance, "202401010002", "rules")
    assert appliance.cli("migrate").returncode == 0
