"""Issue 16.27: the systemd units that tie migrations to Flywall's boot, and what they run."""

from __future__ import annotations

import configparser
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import forkserver
import pytest
from conftest import FLYWALL, Appliance, create_table_migration

if TYPE_CHECKING:
    from collections.abc import Iterator

V1, V2 = "202401010001", "202401010002"
UNITS = ("flywall-migration-boot.service", "flywall-migration-confirm.service")


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return forkserver.run([FLYWALL, "migration", "--root", str(root), "install-units"], timeout=60)


def unit(root: Path, name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(root / "etc/systemd/system" / name, encoding="utf-8")
    return parser


def test_install_units_places_both_units_enabled_against_flywall_service(tmp_path: Path) -> None:
    result = install(tmp_path)

    assert result.returncode == 0, result.stderr
    system = tmp_path / "etc/systemd/system"
    boot, confirm = unit(tmp_path, UNITS[0]), unit(tmp_path, UNITS[1])
    assert boot["Unit"]["Before"] == "flywall.service"
    assert boot["Install"]["RequiredBy"] == "flywall.service"  # a failure holds Flywall back
    assert boot["Service"]["Type"] == "oneshot"
    executable, command = boot["Service"]["ExecStart"].split(" ", 1)
    assert Path(executable).is_absolute()
    assert Path(executable).name == "flywall-migration"
    assert command == "recover"
    assert confirm["Unit"]["After"] == "flywall.service"
    assert " confirm --when-healthy http://127.0.0.1:8080/ " in confirm["Service"]["ExecStart"]
    assert (system / "flywall.service.requires" / UNITS[0]).resolve() == system / UNITS[0]
    assert (system / "flywall.service.wants" / UNITS[1]).resolve() == system / UNITS[1]
    assert install(tmp_path).returncode == 0  # again: the same files, no error


def test_install_units_where_the_folder_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("a file where the folder goes\n", encoding="utf-8")

    result = install(tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith("FAILED: ")
    assert result.stderr.count("\n") == 1
    assert "etc" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_installed_units(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    system = tmp_path / "etc/systemd/system"
    # Our own stand-in for Flywall's service, so the units' dependencies resolve.
    (system / "flywall.service").write_text(
        "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n", encoding="utf-8"
    )

    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(system / name) for name in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=system,
    )

    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "flywall-migration" in line]
    assert ours == []  # systemd only warns about a bad key: any word on our units fails


def test_recover_with_auto_migrate_also_applies_what_is_pending(appliance: Appliance) -> None:
    create_table_migration(appliance, V1, "alpha")
    create_table_migration(appliance, V2, "beta")

    assert appliance.cli("recover").returncode == 0  # auto_migrate off: recover applies nothing
    assert {r["state"] for r in json.loads(appliance.cli("list", "--json").stdout)} == {"pending"}
    appliance.configure("auto_migrate = true\n")
    result = appliance.cli("recover")

    assert result.returncode == 0, result.stderr
    rows = json.loads(appliance.cli("list", "--json").stdout)
    assert [(r["version"], r["state"]) for r in rows] == [(V1, "applied"), (V2, "applied")]


@pytest.fixture
def answering_daemon() -> Iterator[str]:
    """A stand-in for Flywall's API: any answer below 500 means the daemon serves."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)  # unauthenticated, but up
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def awaiting(app: Appliance) -> dict[str, object]:
    return json.loads(app.cli("status", "--json").stdout)["awaiting_confirmation"]


def test_confirm_when_healthy_closes_the_window_once_the_daemon_answers(
    appliance: Appliance, answering_daemon: str
) -> None:
    appliance.configure('confirm_within = "10m"\n')
    create_table_migration(appliance, V1, "alpha")
    appliance.migrate()
    assert awaiting(appliance)

    result = appliance.cli("confirm", "--when-healthy", answering_daemon, "--deadline", "10")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("confirmed run(s) ")
    assert awaiting(appliance) == {}


def test_confirm_when_healthy_without_an_answer_confirms_nothing(appliance: Appliance) -> None:
    appliance.configure('confirm_within = "10m"\n')
    create_table_migration(appliance, V1, "alpha")
    appliance.migrate()

    result = appliance.cli("confirm", "--when-healthy", "http://127.0.0.1:9/", "--deadline", "1")

    assert result.returncode == 1
    assert result.stderr.startswith("FAILED: Flywall did not answer http://127.0.0.1:9/ within 1s")
    assert result.stderr.count("\n") == 1
    assert awaiting(appliance)  # the window stays open: it closes by rolling back


def test_confirm_when_healthy_on_a_normal_boot_waits_for_nothing(appliance: Appliance) -> None:
    create_table_migration(appliance, V1, "alpha")
    appliance.migrate()

    result = appliance.cli("confirm", "--when-healthy", "http://127.0.0.1:9/", "--deadline", "30")

    assert (result.returncode, result.stdout) == (0, "nothing to confirm\n")
