"""Issue 16.13: `--wait SECONDS` waits for the writer lock instead of exiting 3 at once."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import FLYWALL, hold_lock_migration

if TYPE_CHECKING:
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


def _at_the_lock(process: subprocess.Popen[str], lock: Path) -> bool:
    """True once `process` has the writer lock file open: it is trying for the lock."""
    try:
        fds = list(Path(f"/proc/{process.pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            if fd.readlink() == lock:
                return True
    return False


@pytest.mark.parametrize("command", [("migrate",), ("recover",), ("backup", "create")])
def test_wait_runs_once_the_holder_lets_go(appliance, tmp_path, command):
    """The holder lets go only once the waiter is seen at the lock (no fixed head start)."""
    first, release = _hold(appliance, tmp_path)
    lock = appliance.workspace().paths.lock
    args = [FLYWALL, "migration", "--root", str(appliance.root), *command, "--wait", "30"]
    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _at_the_lock(second, lock):
            assert second.poll() is None, second.communicate()
            assert time.monotonic() < deadline, "the second command never reached the lock"
            time.sleep(0.01)
        time.sleep(0.1)  # a few of its 20 ms retries meet the live holder
        assert second.poll() is None, second.communicate()  # without --wait: exit 3 at once
    finally:
        release.touch()
        first.communicate(timeout=60)
        _, err = second.communicate(timeout=60)

    assert first.returncode == 0
    assert second.returncode == 0, err
    assert "Traceback" not in err


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
