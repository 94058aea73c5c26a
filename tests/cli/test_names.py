"""Issue 14 item 6: `flywall-migration` is ours; `flywall` hides none of Flywall's commands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import FLYWALL, Appliance, create_table_migration

FLYWALL_MIGRATION = str(Path(FLYWALL).with_name("flywall-migration"))

FAKE_FLYWALL = """#!/bin/sh
echo "{name} got: $*"
exit 7
"""


def fake_binary(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flywall"
    path.write_text(FAKE_FLYWALL.format(name=name))
    path.chmod(0o755)
    return path


def run(program: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("FLYWALL_BIN", "FLYWALL_ROOT")}
    return subprocess.run(
        [program, *args], capture_output=True, text=True, env={**base, **env}, check=False
    )


def test_flywall_migration_answers_as_flywall_migration_does(appliance: Appliance):
    create_table_migration(appliance, "202401010001", "alpha")
    for args in (["migrate"], ["status"], ["list", "--json"], ["history"]):
        ours = run(FLYWALL_MIGRATION, "--root", str(appliance.root), *args, env={})
        seed = run(FLYWALL, "migration", "--root", str(appliance.root), *args, env={})
        assert ours.returncode == 0, ours.stderr
        if args != ["migrate"]:
            assert (ours.stdout, ours.stderr) == (seed.stdout, seed.stderr)
    slow = run(
        FLYWALL_MIGRATION,
        "--root",
        str(appliance.root),
        "status",
        env={"FLYWALL_NO_FAST_PATH": "1"},
    )
    assert (
        slow.stdout
        == run(FLYWALL_MIGRATION, "--root", str(appliance.root), "status", env={}).stdout
    )


def test_flywall_migration_help_names_itself():
    result = run(FLYWALL_MIGRATION, "--help", env={"COLUMNS": "80"})

    assert result.returncode == 0
    assert result.stdout.startswith("Usage: flywall-migration [OPTIONS] COMMAND [ARGS]...\n")


def test_any_other_first_word_goes_to_the_binary_named_by_flywall_bin(tmp_path):
    binary = fake_binary(tmp_path / "named", "named")

    result = run(FLYWALL, "check", "/etc/x.hcl", env={"FLYWALL_BIN": str(binary)})

    assert (result.stdout, result.returncode) == ("named got: check /etc/x.hcl\n", 7)


def test_without_flywall_bin_the_roots_opt_flywall_binary_is_used(tmp_path):
    root = tmp_path / "box"
    fake_binary(root / "opt/flywall/bin", "shipped")
    fake_binary(tmp_path / "path", "on-path")
    path = f"{tmp_path / 'path'}{os.pathsep}{os.environ['PATH']}"

    result = run(FLYWALL, "version", env={"FLYWALL_ROOT": str(root), "PATH": path})

    assert (result.stdout, result.returncode) == ("shipped got: version\n", 7)


def test_else_the_next_flywall_on_path_after_this_one(tmp_path):
    before = fake_binary(tmp_path / "before", "before")
    after = fake_binary(tmp_path / "after", "after")
    ours = str(Path(FLYWALL).parent)
    path = os.pathsep.join([str(before.parent), ours, str(after.parent), "/usr/bin", "/bin"])

    result = run(FLYWALL, "--help", env={"PATH": path, "FLYWALL_ROOT": str(tmp_path)})
    assert (result.stdout, result.returncode) == ("after got: --help\n", 7)

    path = os.pathsep.join([str(before.parent), ours, "/usr/bin", "/bin"])
    result = run(FLYWALL, "start", env={"PATH": path, "FLYWALL_ROOT": str(tmp_path)})
    assert (result.stdout, result.returncode) == ("before got: start\n", 7)


@pytest.mark.parametrize("args", [[], ["start"], ["--help"], ["upgrade", "--force"]])
def test_with_no_flywall_binary_anywhere_it_says_so_in_one_line(tmp_path, args):
    path = os.pathsep.join([str(Path(FLYWALL).parent), "/usr/bin", "/bin"])

    result = run(FLYWALL, *args, env={"PATH": path, "FLYWALL_ROOT": str(tmp_path)})

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "FAILED: Flywall's own flywall command was not found (FLYWALL_BIN, "
        "ROOT/opt/flywall/bin/flywall, PATH); this one runs only `flywall migration ...` "
        "(also `flywall-migration ...`)\n"
    )


def test_flywall_bin_naming_this_very_script_is_not_followed_into_a_loop(tmp_path):
    result = run(FLYWALL, "start", env={"FLYWALL_BIN": FLYWALL, "FLYWALL_ROOT": str(tmp_path)})

    assert result.returncode == 2
    assert result.stderr.startswith("FAILED: Flywall's own flywall command was not found")
