"""Issue 14 item 5: never race the Flywall daemon; stop and start it around a run; check_command.

A small script of our own stands in for Flywall's daemon control: `start` spawns a sleeping
process and writes its pid to `<run dir>/flywall.pid`, `stop` kills it and removes the file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Appliance, create_table_migration

from flywall.core import commands
from flywall.core.appliance.daemon import live_pid

V1 = "202401010001"

CONTROL = """\
import os, signal, subprocess, sys, time
from pathlib import Path

command, run_dir, log = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with log.open("a") as f:
    f.write(command + "\\n")
pid_file = run_dir / "flywall.pid"
if command == "start":
    run_dir.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pid_file.write_text(f"{p.pid}\\n")
elif command == "stop":
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    pid_file.unlink()
elif command == "refuse":
    print("flywall: cannot stop: a reload is in progress")
    sys.exit(1)
"""

CHECK = """\
import sys
from pathlib import Path

text = Path(sys.argv[1]).read_text()
Path(sys.argv[2]).write_text(text)
if "forbidden" in text:
    print(f"{sys.argv[1]}: line 3: unknown block \\"forbidden\\"")
    sys.exit(1)
"""

CONFIG_MIGRATION = '''\
"""Add a block to the config."""
component = "config"


def up(ctx, config):
    config.body.add_block("{block}", enabled=False)


def down(ctx, config):
    config.body.remove_block(config.body.block("{block}"))
'''


@pytest.fixture
def daemon(appliance: Appliance, tmp_path: Path):
    """The control script, its log, and a running stand-in daemon; killed at the end."""
    script = tmp_path / "flywallctl.py"
    script.write_text(CONTROL)
    log = tmp_path / "control.log"
    run_dir = appliance.root / "var/run"

    def control(command: str) -> list[str]:
        return [sys.executable, str(script), command, str(run_dir), str(log)]

    subprocess.run(control("start"), check=True)
    log.unlink()
    yield control, log, run_dir
    pid = live_pid(run_dir)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def settings_with(control, stop: str = "stop", extra: str = "") -> str:
    return (
        f"stop_command = {json.dumps(control(stop))}\n"
        f"start_command = {json.dumps(control('start'))}\n{extra}"
    )


def events(app: Appliance) -> list[str]:
    """The journal's event kinds, read as `history --json` reads them (in this process)."""
    return [e["kind"] for e in commands.history(app.workspace())]


def test_a_writer_refuses_while_flywall_pid_names_a_live_process(appliance, daemon):
    _, log, run_dir = daemon
    create_table_migration(appliance, V1, "alpha")
    pid = live_pid(run_dir)

    for command in (["migrate"], ["recover"], ["backup", "create"]):
        result = appliance.cli(*command)
        assert result.returncode == 3, result.stderr
        assert result.stderr == (
            f"FAILED: Flywall is running (pid {pid}, var/run/flywall.pid): stop it first, or "
            "set stop_command and start_command in etc/flywall/migration.hcl\n"
        )
    assert not appliance.state_db.exists()
    assert events(appliance) == []
    assert live_pid(run_dir) == pid
    assert not log.exists()


def test_a_pid_file_naming_no_live_process_does_not_stop_a_run(appliance, tmp_path):
    create_table_migration(appliance, V1, "alpha")
    run_dir = appliance.root / "var/run"
    run_dir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names nothing now
    (run_dir / "flywall.pid").write_text(f"{gone.pid}\n")

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr


def test_stop_and_start_commands_run_around_the_work_and_are_journaled(appliance, daemon):
    control, log, run_dir = daemon
    appliance.configure(settings_with(control))
    create_table_migration(appliance, V1, "alpha")
    before = live_pid(run_dir)

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr
    assert log.read_text() == "stop\nstart\n"
    after = live_pid(run_dir)
    assert after is not None
    assert after != before
    kinds = events(appliance)
    assert kinds[0] == "DaemonStopRequested"
    assert kinds[1] == "DaemonStopped"
    assert kinds[-1] == "DaemonStarted"
    assert "MigrationApplied" in kinds


def test_a_failing_stop_command_stops_the_run_before_anything_changed(appliance, daemon):
    control, log, run_dir = daemon
    appliance.configure(settings_with(control, stop="refuse"))
    create_table_migration(appliance, V1, "alpha")
    pid = live_pid(run_dir)

    result = appliance.cli("migrate")

    assert result.returncode == 3
    assert result.stderr == (
        "FAILED: stop_command failed (exit 1): flywall: cannot stop: a reload is in progress; "
        "nothing was changed\n"
    )
    assert not appliance.state_db.exists()
    assert events(appliance)[:2] == ["DaemonStopRequested", "DaemonCommandFailed"]
    # start_command ran to leave the daemon as it was found
    assert log.read_text() == "refuse\nstart\n"
    assert live_pid(run_dir) is not None
    os.kill(pid, signal.SIGKILL)


DAEMON_POINTS = [
    "after-DaemonStopRequested",
    "after-daemon-stop",
    "after-DaemonStopped",
    "before-daemon-start",
    "after-DaemonStarted",
]


@pytest.mark.parametrize("point", DAEMON_POINTS)
def test_a_run_killed_around_the_daemon_leaves_it_running_after_the_next_run(
    appliance, daemon, tmp_path, point
):
    """Write-ahead: a run cut between stop and start leaves the daemon owed a start, which
    the next writing run gives it; the migration is applied once."""
    control, log, run_dir = daemon
    appliance.configure(settings_with(control))
    create_table_migration(appliance, V1, "alpha")
    reached = tmp_path / "reached.txt"

    killed = appliance.cli(
        "migrate", env={"FLYWALL_CRASH_AT": point, "FLYWALL_CRASH_LIST": str(reached)}
    )

    assert killed.returncode == -signal.SIGKILL
    assert f"{point} 1" in reached.read_text().splitlines()
    rerun = appliance.cli("migrate")
    assert rerun.returncode == 0, rerun.stderr
    assert live_pid(run_dir) is not None, log.read_text()
    kinds = events(appliance)
    assert kinds.count("MigrationApplied") == 1
    last = [k for k in kinds if k in ("DaemonStopRequested", "DaemonStarted")][-1]
    assert last == "DaemonStarted"
    assert log.read_text().count("start") == kinds.count("DaemonStarted")


def test_check_command_refuses_a_migrated_config_and_flywall_hcl_stays_untouched(
    appliance, tmp_path
):
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    seen = tmp_path / "seen.hcl"
    command = [sys.executable, str(check), "{config}", str(seen)]
    appliance.configure(f"check_command = {json.dumps(command)}\n")
    appliance.write(f"{V1}_forbidden.py", CONFIG_MIGRATION.format(block="forbidden"))
    before = appliance.config.read_bytes()

    result = appliance.cli("migrate")

    assert result.returncode == 1
    assert "check_command refused the migrated config (exit 1): " in result.stderr
    assert 'unknown block "forbidden"' in result.stderr
    assert "flywall.hcl was left as it was" in result.stderr
    assert appliance.config.read_bytes() == before
    assert "forbidden" in seen.read_text()  # it checked the migrated text, in a temp file
    assert not [p for p in appliance.config.parent.iterdir() if "check" in p.name]
    assert "WriteIntent" not in events(appliance)


def test_check_command_lets_an_accepted_config_replace_flywall_hcl(appliance, tmp_path):
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    seen = tmp_path / "seen.hcl"
    command = [sys.executable, str(check), "{config}", str(seen)]
    appliance.configure(f"check_command = {json.dumps(command)}\n")
    appliance.write(f"{V1}_ebpf.py", CONFIG_MIGRATION.format(block="ebpf"))

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr
    assert seen.read_text() == appliance.config.read_text()
    assert "ebpf" in seen.read_text()


def test_live_pid_reads_only_a_number_naming_a_live_process(tmp_path):
    pid_file = tmp_path / "flywall.pid"
    assert live_pid(tmp_path) is None
    for text in ("", "abc\n", "-1\n", "0\n"):
        pid_file.write_text(text)
        assert live_pid(tmp_path) is None, text
    pid_file.write_text(f"{os.getpid()}\n")
    assert live_pid(tmp_path) == os.getpid()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pid_file.write_text(f"{zombie.pid}\n")
    assert live_pid(tmp_path) is None  # exited, not yet reaped: not running
    zombie.wait()


def test_the_demo_box_has_a_stale_pid_file_that_does_not_block_a_run(tmp_path):
    from flywall.core.appliance import demo

    made = demo.build(tmp_path / "box")

    assert Path(made["pid_file"]).exists()
    assert live_pid(Path(made["pid_file"]).parent) is None
    assert textwrap.dedent(made["layout"]) == "flywall"


def test_a_dry_run_changes_nothing_so_it_runs_beside_the_daemon(appliance, daemon):
    _, log, run_dir = daemon
    create_table_migration(appliance, V1, "alpha")

    result = appliance.cli("migrate", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert live_pid(run_dir) is not None
    assert not log.exists()


def test_a_failing_start_command_is_exit_1_and_the_next_run_starts_the_daemon(appliance, daemon):
    control, _, run_dir = daemon
    broken = f"stop_command = {json.dumps(control('stop'))}\n"
    appliance.configure(broken + f"start_command = {json.dumps(control('refuse'))}\n")
    create_table_migration(appliance, V1, "alpha")

    result = appliance.cli("migrate")

    assert result.returncode == 1
    assert result.stderr.endswith(
        "FAILED: start_command failed (exit 1): flywall: cannot stop: a reload is in "
        "progress; start Flywall by hand\n"
    )
    assert live_pid(run_dir) is None
    kinds = events(appliance)
    assert "MigrationApplied" in kinds
    assert kinds[-1] == "DaemonCommandFailed"
    assert appliance.cli("status").returncode == 0  # the run itself closed properly

    appliance.configure(settings_with(control))
    rerun = appliance.cli("migrate")

    assert rerun.returncode == 0, rerun.stderr
    assert live_pid(run_dir) is not None
    assert events(appliance)[-1] == "DaemonStarted"
