"""Issue 16.11: a user who may only read the box runs status, list, history, validate and
journal verify (the journal was opened read-write: "attempt to write a readonly database")."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import apsw
import pytest
from conftest import FLYWALL
from templates import build_demo

from flywall.core import commands
from flywall.core.appliance.workspace import Workspace

NOBODY = 65534

# setpriv (util-linux) drops to the unprivileged uid and every capability before it execs;
# a preexec_fn calling os.setuid could not exec this venv's interpreter here
SETPRIV = shutil.which("setpriv")


def _nobody_can_run_the_cli() -> bool:
    """Whether the unprivileged user can start this checkout's CLI at all.

    A clone under a private folder (`mktemp -d` is mode 0700, as are root's pyenv shims)
    is out of its reach: then there is nothing of ours to test, only the folder's mode.
    """
    if os.geteuid() != 0 or SETPRIV is None:
        return False
    probe = subprocess.run(
        [str(SETPRIV), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", FLYWALL,
         "migration", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _nobody_can_run_the_cli(),
    reason="needs root, setpriv, and a checkout the unprivileged user can reach",
)

READERS = [
    ("status",),
    ("status", "--json"),
    ("list",),
    ("list", "--json"),
    ("history",),
    ("validate",),
    ("journal", "verify"),
]


def _run_as_nobody(root: Path, *args: str, fast: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLYWALL_NO_FAST_PATH": fast, "HOME": "/nonexistent"}
    env.pop("XDG_CACHE_HOME", None)
    return subprocess.run(
        [
            str(SETPRIV),
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            FLYWALL,
            "migration",
            "--root",
            str(root),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def box() -> Path:
    """A migrated demo box that others may read but not write (root owns every file)."""
    top = Path(tempfile.mkdtemp(prefix="flywall-ro-", dir="/tmp"))
    top.chmod(0o755)  # pytest's tmp_path is 0700: nobody could not even reach it
    root = top / "box"
    build_demo(root)  # setup, in this process: `demo` and `migrate` have CLI tests of their own
    report = commands.migrate(Workspace.load(root))
    assert report.outcome == "completed", report
    yield root
    shutil.rmtree(top)


@pytest.mark.parametrize("fast", ["", "1"], ids=["fast path", "click"])
@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_a_read_only_user_runs_every_reading_command(box, args, fast):
    journal = box / "opt/flywall/var/lib/migration-journal.db"
    before = journal.read_bytes()

    result = _run_as_nobody(box, *args, fast=fast)

    assert result.returncode == 0, result.stderr
    assert "readonly" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout
    assert journal.read_bytes() == before


def test_a_read_only_user_sees_the_last_run_and_the_same_history_as_root(box):
    as_root = subprocess.run(
        [FLYWALL, "migration", "--root", str(box), "history", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    as_nobody = _run_as_nobody(box, "history", "--json")
    assert as_nobody.returncode == 0, as_nobody.stderr
    assert as_nobody.stdout == as_root.stdout


def test_a_writer_is_still_refused_to_a_read_only_user_in_one_line(box):
    result = _run_as_nobody(box, "migrate")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("FAILED: ")
    assert result.stderr.count("\n") == 1


def test_a_pending_write_ahead_log_is_read_or_named_in_one_line(box):
    """A writer's uncheckpointed log: read through a read-only -shm, or said plainly."""
    journal = box / "opt/flywall/var/lib/migration-journal.db"
    with closing(apsw.Connection(str(journal))) as writer:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("CREATE TABLE IF NOT EXISTS test_pending_wal (x)")
        assert Path(str(journal) + "-wal").stat().st_size > 0

        result = _run_as_nobody(box, "journal", "verify")

    assert "Traceback" not in result.stderr
    if result.returncode != 0:
        assert result.stderr.startswith("FAILED: ")
        assert "write-ahead log" in result.stderr
        assert result.stderr.count("\n") == 1
