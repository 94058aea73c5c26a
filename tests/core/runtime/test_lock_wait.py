"""Issue 16.13: `--wait SECONDS` waits for the writer lock instead of exiting 3 at once."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest
from conftest import FLYWALL, hold_lock_migration

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Appliance

V1 = "202401010001"


def _hold(appliance: Appliance, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """Start a migrate that holds the lock (a live holder) until `release` exists."""
    started, release = tmp_path / "started", tmp_path / "release"
    hold_lock_migration(appliance, V1, started, release)
    command = [FLYWALL, "migration", "--root", str(appliance.root), "migrate"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "the first migrate never reached its migration"
    return first, release


@pytest.mark.parametrize("command", [("migrate",), ("recover",), ("backup", "create")])
def test_wait_runs_once_the_holder_lets_go(appliance, tmp_path, command):
    first, release = _hold(appliance, tmp_path)
    timer = threading.Timer(1.5, release.touch)
    timer.start()
    try:
        t0 = time.monotonic()
        second = appliance.cli(*command, "--wait", "30")
        waited = time.monotonic() - t0
    finally:
        timer.cancel()
        release.touch()
        first.communicate(timeout=60)

    assert first.returncode == 0
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    assert waited >= 1.0  # it waited for the live holder, then ran


def test_wait_gives_up_after_its_seconds_with_exit_3(appliance, tmp_path):
    first, release = _hold(appliance, tmp_path)
    try:
        t0 = time.monotonic()
        second = appliance.cli("migrate", "--wait", "0.8")
        waited = time.monotonic() - t0
    finally:
        release.touch()
        first.communicate(timeout=60)

    assert second.returncode == 3, second.stderr
    assert second.stderr.startswith("FAILED: busy: run ")
    assert second.stderr.endswith(" (waited 0.8 s)\n")
    assert second.stderr.count("\n") == 1
    assert waited >= 0.8


def test_without_wait_a_live_holder_is_busy_at_once(appliance, tmp_path):
    first, release = _hold(appliance, tmp_path)
    try:
        t0 = time.monotonic()
        second = appliance.cli("rollback", "--steps", "1")
        took = time.monotonic() - t0
    finally:
        release.touch()
        first.communicate(timeout=60)

    assert second.returncode == 3
    assert "waited" not in second.stderr
    assert took < 5


def test_a_bad_wait_is_a_usage_error(appliance):
    result = appliance.cli("migrate", "--wait", "-1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
