"""Issue 14: Flywall's layout and the seed's, settings in migration.hcl, never in flywall.hcl."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import FLYWALL, Appliance, create_table_migration

from flywall.core.appliance import layout
from flywall.core.appliance.settings import load_settings
from flywall.core.model.errors import SettingsError

V1 = "202401010001"
FLYWALL_MIGRATION = str(Path(FLYWALL).with_name("flywall-migration"))
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith("FLYWALL_") or k in ("FLYWALL_NO_FAST_PATH", "FLYWALL_NO_STATUS_MEMO")
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def flywall_box(root: Path, settings: str = "migration {\n  include_shipped = false\n}\n") -> Path:
    """A box in Flywall's own layout: /opt/flywall/etc and /opt/flywall/var/lib."""
    write(root / "opt/flywall/etc/flywall.hcl", '# a Flywall box\nschema_version = "1.0"\n')
    write(root / "opt/flywall/etc/migration.hcl", settings)
    return root


def cli(
    root: Path, *args: str, env: dict[str, str] | None = None, program: str = FLYWALL_MIGRATION
):
    return subprocess.run(
        [program, "--root", str(root), *args],
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, **(env or {})},
        timeout=60,
        check=False,
    )


# -- detection ------------------------------------------------------------------------------


def test_flywalls_layout_is_found_first_and_ours_sits_beside_its_files(tmp_path):
    box = flywall_box(tmp_path)
    write(box / "etc/flywall/flywall.hcl", "")  # a leftover seed tree loses to Flywall's

    settings = load_settings(box, environ={})
    p = settings.paths

    assert settings.layout == "flywall"
    assert p.config == box / "opt/flywall/etc/flywall.hcl"
    assert p.settings == box / "opt/flywall/etc/migration.hcl"
    assert p.migrations_dir == box / "opt/flywall/etc/migrations"
    assert p.tokens_file == box / "opt/flywall/etc/migration-api.tokens"
    assert p.state_db == box / "opt/flywall/var/lib/state.db"
    assert p.journal == box / "opt/flywall/var/lib/migration-journal.db"
    assert p.backups == box / "opt/flywall/var/lib/migration-backups"
    assert p.api_document == box / "opt/flywall/var/lib/api.json"
    assert p.run_dir == box / "opt/flywall/var/run"
    assert p.ui_backups == box / "opt/flywall/etc/backups"


def test_the_seeds_layout_is_found_when_flywalls_has_no_config(tmp_path):
    write(tmp_path / "etc/flywall/flywall.hcl", "")

    settings = load_settings(tmp_path, environ={})

    assert settings.layout == "seed"
    assert settings.paths.state_db == tmp_path / "var/lib/flywall/state.db"
    assert settings.paths.settings == tmp_path / "etc/flywall/migration.hcl"


def test_flywalls_environment_overrides_apply_in_its_order(tmp_path):
    """FLYWALL.md §1: the *_DIR variable, then (state only) the config's state_dir, then
    FLYWALL_PREFIX/{config,state,run}, then /opt/flywall; all placed under the root."""
    write(tmp_path / "srv/fw/config/flywall.hcl", 'state_dir = "/data/fw" # moved\n')
    prefix = {"FLYWALL_PREFIX": "/srv/fw"}

    found = layout.detect(str(tmp_path), prefix)
    assert found.name == "flywall"
    assert found.config_dir == str(tmp_path / "srv/fw/config")
    assert found.state_dir == str(tmp_path / "data/fw")  # the config's state_dir beats PREFIX
    assert found.run_dir == str(tmp_path / "srv/fw/run")

    write(tmp_path / "srv/fw/config/flywall.hcl", 'api {\n  state_dir = "/nested"\n}\n')
    assert layout.detect(str(tmp_path), prefix).state_dir == str(tmp_path / "srv/fw/state")

    env = {**prefix, "FLYWALL_STATE_DIR": "/st", "FLYWALL_RUN_DIR": "/rn"}
    env["FLYWALL_CONFIG_DIR"] = "/cf"
    write(tmp_path / "cf/flywall.hcl", 'state_dir = "/ignored"\n')
    found = layout.detect(str(tmp_path), env)
    assert (found.config_dir, found.state_dir, found.run_dir) == (
        str(tmp_path / "cf"),
        str(tmp_path / "st"),
        str(tmp_path / "rn"),
    )


def test_a_root_without_any_flywall_config_is_layout_none(tmp_path):
    assert layout.detect(str(tmp_path), {}).name == "none"
    assert load_settings(tmp_path, environ={}).layout == "none"


def test_a_top_level_migration_block_is_found_by_its_line_and_only_at_the_top():
    text = (
        "# migration { } in a comment\n"
        'note = "migration {"\n'
        'zone "x" {\n  migration {\n  }\n}\n'
        "/* migration {\n*/\n"
        "migration {\n  enabled = true\n}\n"
    )
    assert layout.migration_block_line(text) == 9
    assert (
        layout.migration_block_line(text.replace("\nmigration {\n  enabled", "\nx {\n  e")) is None
    )


# -- settings in migration.hcl ------------------------------------------------------------------


def test_settings_are_read_from_migration_hcl_beside_flywall_hcl(tmp_path):
    box = flywall_box(tmp_path, 'migration {\n  timeout = "5m"\n  directory = "vendor"\n}\n')

    settings = load_settings(box, environ={})

    assert settings.timeout == 300
    assert settings.paths.migrations_dir == box / "opt/flywall/etc/vendor"


def test_a_key_set_twice_in_migration_hcl_is_an_error_naming_both_lines(tmp_path):
    box = flywall_box(
        tmp_path, 'migration {\n  timeout = "5m"\n  strategy = "full"\n  timeout = "9m"\n}\n'
    )

    with pytest.raises(SettingsError) as info:
        load_settings(box, environ={})

    message = str(info.value)
    assert message == (
        "opt/flywall/etc/migration.hcl:4: timeout: set twice in one block (first on line 2); keep one"
    )


def test_the_same_key_in_two_different_blocks_is_fine(tmp_path):
    text = 'migration {\n  tokens_file = "a"\n  server {\n    tokens_file = "b"\n  }\n}\n'
    box = flywall_box(tmp_path, text)

    assert load_settings(box, environ={}).paths.tokens_file == box / "opt/flywall/etc/b"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'max_config_version = "1.1.0"',
            'migration.max_config_version: expected a version "X.Y" such as "1.1"',
        ),
        ('stop_command = ["systemctl", "stop", "flywall"]', "go together"),
        ("check_command = []", "migration.check_command: expected list of length >= 1"),
    ],
)
def test_the_new_keys_are_validated(tmp_path, line, message):
    box = flywall_box(tmp_path, f"migration {{\n  {line}\n}}\n")

    with pytest.raises(SettingsError, match=message):
        load_settings(box, environ={})


def test_a_migration_block_left_in_flywall_hcl_is_refused_by_writers_and_reported_by_validate(
    appliance: Appliance,
):
    create_table_migration(appliance, V1, "alpha")
    config = appliance.config
    before = config.read_text() + "\nmigration {\n  enabled = true\n}\n"
    config.write_text(before)
    line = before.splitlines().index("migration {") + 1

    for command in (["migrate"], ["rollback", "--steps", "1"], ["recover"], ["backup", "create"]):
        result = appliance.cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == (
            f"FAILED: etc/flywall/flywall.hcl:{line}: a migration {{ }} block in flywall.hcl "
            "makes Flywall refuse its config: move the block into etc/flywall/migration.hcl\n"
        )
    assert config.read_text() == before
    assert not appliance.journal.exists()
    assert not appliance.state_db.exists()

    validate = appliance.cli("validate", "--json")
    assert validate.returncode == 4
    assert json.loads(validate.stdout)["checks"]["flywall config"].startswith(
        f"etc/flywall/flywall.hcl:{line}: a migration {{ }} block"
    )


# -- a root that is no appliance ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["migrate"], ["recover"], ["backup", "create"], ["create", "add_peers"]]
)
def test_writers_refuse_a_root_with_no_flywall_config_and_write_nothing(tmp_path, command):
    """Issue 14 item 4 and issue 16 item 10: a folder that is not an appliance stays as it was."""
    root = tmp_path / "not-a-box"
    root.mkdir()
    (root / "notes.txt").write_text("hello\n")

    for program in (FLYWALL_MIGRATION, FLYWALL):
        args = ["migration", "--root", str(root), *command] if program == FLYWALL else []
        result = (
            subprocess.run(
                [program, *args], capture_output=True, text=True, env=CLEAN_ENV, check=False
            )
            if args
            else cli(root, *command)
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"FAILED: no Flywall config under {root}\n"
    assert sorted(p.name for p in root.rglob("*")) == ["notes.txt"]


def test_status_names_the_layout_and_every_path(tmp_path):
    box = flywall_box(tmp_path)

    result = cli(box, "status", "--json")
    text = cli(box, "status")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["paths"] == {
        "layout": "flywall",
        "config": str(box / "opt/flywall/etc/flywall.hcl"),
        "settings": str(box / "opt/flywall/etc/migration.hcl"),
        "state": str(box / "opt/flywall/var/lib/state.db"),
        "journal": str(box / "opt/flywall/var/lib/migration-journal.db"),
        "migrations": str(box / "opt/flywall/etc/migrations"),
        "backups": str(box / "opt/flywall/var/lib/migration-backups"),
        "run_dir": str(box / "opt/flywall/var/run"),
    }
    assert text.stdout.startswith(f"layout      flywall ({box}/opt/flywall/etc/flywall.hcl)\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for _ in range(2):
        assert cli(empty, "status").stdout.startswith(
            "layout      none (no Flywall config found)\n"
        )
    assert cli(empty, "list").returncode == 0
    assert list(empty.iterdir()) == []  # not even a cache in a folder that is no appliance


def test_the_status_memo_sees_a_layout_appear(tmp_path):
    """A memo taken while only the seed's tree existed must not answer once Flywall's appears."""
    root = tmp_path / "box"
    write(root / "etc/flywall/flywall.hcl", "")
    first = cli(root, "status", "--json")
    assert json.loads(first.stdout)["paths"]["layout"] == "seed"
    assert json.loads(cli(root, "status", "--json").stdout)["paths"]["layout"] == "seed"

    flywall_box(root)

    assert json.loads(cli(root, "status", "--json").stdout)["paths"]["layout"] == "flywall"


def test_a_migration_run_on_flywalls_layout_keeps_its_files_beside_flywalls(tmp_path):
    box = flywall_box(tmp_path)
    write(
        box / "opt/flywall/etc/migrations" / f"{V1}_create_alpha.sql",
        "-- Create alpha.\n-- migrate:up\nCREATE TABLE alpha (id INTEGER);\n"
        "-- migrate:down\nDROP TABLE alpha;\n",
    )

    result = cli(box, "migrate")

    assert result.returncode == 0, result.stderr
    lib = box / "opt/flywall/var/lib"
    assert sorted(p.name for p in lib.iterdir() if not p.name.startswith(".")) >= [
        "migration-backups",
        "migration-journal.db",
        "migration-journal.db.lock",
        "state.db",
    ]
    assert not (box / "etc").exists()
    assert not (box / "var/lib").exists()
