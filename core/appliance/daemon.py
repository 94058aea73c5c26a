"""The Flywall daemon as a run sees it: is it alive, stop it, start it, check a config with it.

The daemon keeps state.db open and rewrites flywall.hcl itself whenever its UI changes a
setting (FLYWALL.md §1), so a migration must never run beside it. `<run dir>/flywall.pid`
naming a live process says it runs. The operator's `stop_command` and `start_command`
(argument lists, never a shell) let a run stop it and start it again; `check_command`
is the firmware's own validator (`flywall check {config}`), asked about every migrated
config before it replaces flywall.hcl.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["PID_FILE", "CommandResult", "check_config", "live_pid", "run", "wait_gone"]

PID_FILE = "flywall.pid"
COMMAND_TIMEOUT = 120.0
"""Seconds a stop, start or check command may take before it counts as failed."""
STOP_GRACE = 10.0
"""Seconds the daemon's pid may outlive a successful `stop_command`."""
_OUTPUT_LIMIT = 2000


class CommandResult:
    """What an operator's command did: its exit code and its output (stdout then stderr)."""

    __slots__ = ("exit_code", "output")

    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code = exit_code
        self.output = output

    @property
    def ok(self) -> bool:
        """True if the command exited 0."""
        return self.exit_code == 0


def live_pid(run_dir: Path) -> int | None:
    """The pid `run_dir/flywall.pid` names, if that process is alive (a zombie is not).

    A missing or unreadable file, or one that names no number, names no live process.
    """
    try:
        words = (run_dir / PID_FILE).read_text(encoding="utf-8").split()
        pid = int(words[0])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, and someone else's: still the daemon
    return None if _zombie(pid) else pid


def _zombie(pid: int) -> bool:
    """True if `pid` has exited and waits for its parent (Linux's /proc says "Z")."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] in ("Z", "X")


def wait_gone(run_dir: Path, pid: int, grace: float = STOP_GRACE) -> bool:
    """Wait up to `grace` seconds for the daemon `pid` to stop; True once it has."""
    deadline = time.monotonic() + grace
    while live_pid(run_dir) == pid:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run(argv: tuple[str, ...] | list[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult:
    """Run an operator's command (no shell); a command that cannot start is exit 127."""
    import subprocess  # lazy: every writer asks `live_pid`, few run a command (~6 ms)

    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return CommandResult(127, f"{argv[0]}: command not found")
    except PermissionError:
        return CommandResult(126, f"{argv[0]}: permission denied")
    except subprocess.TimeoutExpired:
        return CommandResult(124, f"{argv[0]}: still running after {timeout:g} s")
    output = " ".join((done.stdout + "\n" + done.stderr).split())  # one line for errors
    return CommandResult(done.returncode, output[:_OUTPUT_LIMIT])


def check_config(argv: tuple[str, ...], text: bytes) -> CommandResult:
    """Write `text` to a temporary file and run `argv` with `{config}` naming it.

    The file lives in the system's temporary folder, never beside flywall.hcl (a cut
    there would leave a stray file in Flywall's config folder), and is removed after.
    """
    import tempfile  # lazy: only a config migration with `check_command` needs it

    fd, name = tempfile.mkstemp(prefix="flywall-check-", suffix=".hcl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        return run([arg.replace("{config}", name) for arg in argv])
    finally:
        Path(name).unlink(missing_ok=True)
