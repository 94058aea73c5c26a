"""Issue 16.9: SIGINT (Ctrl-C) and SIGTERM end a run as failed, journaled, exit 130 / 143."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest
from conftest import FLYWALL, create_table_migration

from flywall.core import commands

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Appliance

V1, V2 = "202401010001", "202401010002"

SLEEPER = '''\
"""Creates a table, then takes its time."""
import time
from pathlib import Path

component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE sleeper (x)")
    Path({started!r}).touch()
    time.sleep(30)
'''


def _interrupt(appliance: Appliance, tmp_path: Path, signum: int, *args: str) -> tuple:
    started = tmp_path / "started"
    appliance.write(f"{V2}_sleeper.py", SLEEPER.format(started=str(started)))
    command = [FLYWALL, "migration", "--root", str(appliance.root), "migrate", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), proc.stderr.read() if proc.poll() is not None else "never started"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    return proc, out, err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_as_failed_with_its_exit_code(appliance, tmp_path, signum, code):
    create_table_migration(appliance, V1, "alpha")
    proc, out, err = _interrupt(appliance, tmp_path, signum)
    name = signal.Signals(signum).name

    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "Aborted!" not in err
    assert "KeyboardInterrupt" not in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED: ")]
    assert len(failed) == 1, err
    assert f"interrupted by {name}" in failed[0]
    assert "the 1 migration it applied before stay applied" in failed[0]
    assert out == ""

    history = commands.history(appliance.workspace())
    kinds = [e["kind"] for e in history]
    assert kinds[-2:] == ["MigrationFailed", "RunFinished"]
    finished = history[-1]
    assert finished["outcome"] == "failed"
    assert f"interrupted by {name}" in finished["error"]
    assert history[-2]["phase"] == "interrupted"

    status = appliance.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    last = json.loads(status.stdout)["last_run"]
    assert last["run_id"] == finished["run_id"]
    assert last["outcome"] == "failed"

    listed = {r["version"]: r["state"] for r in json.loads(appliance.cli("list", "--json").stdout)}
    assert listed == {V1: "applied", V2: "failed"}
    import apsw

    db = apsw.Connection(str(appliance.state_db))
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()
    assert "sleeper" not in tables  # the step under way was undone
    assert "alpha" in tables


def test_sigint_with_json_is_one_failed_line_and_exit_130(appliance, tmp_path):
    proc, _, err = _interrupt(appliance, tmp_path, signal.SIGINT, "--json")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("FAILED: ")] != []
