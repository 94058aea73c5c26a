"""Issue 16.12: `timeout` holds for a migration's Python code too, not only for SQLite."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from flywall.core import commands

if TYPE_CHECKING:
    from conftest import Appliance

SLEEPS_IN_PYTHON = '''\
"""Spends its time outside SQLite."""
import time

component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE started (x)")
    try:
        time.sleep(8)
    except Exception:  # a vendor's catch-all cannot swallow the timeout
        pass
'''

SLOW_SQL = '''\
"""One statement that never ends."""
component = "database"


def up(ctx, db):
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    ).fetchall()
'''

SLOW_CONFIG = '''\
"""Thinks about the config for too long."""
import time

component = "config"


def up(ctx, config):
    config.body.add_block("touched", enabled=True)
    time.sleep(8)
'''


def _failure(appliance: Appliance) -> dict[str, object]:
    (failed,) = [
        e for e in commands.history(appliance.workspace()) if e["kind"] == "MigrationFailed"
    ]
    return failed


def _tables(appliance: Appliance) -> list[str]:
    import apsw

    db = apsw.Connection(str(appliance.state_db))
    try:
        return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    finally:
        db.close()


@pytest.mark.parametrize("strategy", ["incremental", "full"])
def test_python_sleeping_past_the_timeout_fails_and_is_undone(appliance, strategy):
    appliance.configure(f'timeout = "300ms"\nstrategy = "{strategy}"\n')
    appliance.write("202401010001_sleepy.py", SLEEPS_IN_PYTHON)

    t0 = time.monotonic()
    result = appliance.cli("migrate")
    took = time.monotonic() - t0

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        "FAILED: migration 202401010001 failed during timeout: Timeout: exceeded 0.3 s: "
        "its Python code ran past the 0.3 s timeout; its transaction was undone\n"
    ) in result.stderr
    assert took < 7
    failed = _failure(appliance)
    assert failed["phase"] == "timeout"
    assert "its Python code ran past the 0.3 s timeout" in failed["message"]
    assert "started" not in _tables(appliance)
    assert appliance.cli("status").returncode == 0


def test_a_slow_statement_says_sqlite_was_interrupted(appliance):
    appliance.configure('timeout = "300ms"\n')
    appliance.write("202401010001_slow.py", SLOW_SQL)

    result = appliance.cli("migrate")

    assert result.returncode == 1
    assert "exceeded 0.3 s: SQLite statement interrupted; its transaction was undone" in (
        result.stderr
    )


def test_a_config_migration_past_the_timeout_fails_and_leaves_the_file(appliance):
    appliance.configure('timeout = "300ms"\n')
    appliance.write("202401010001_slow_config.py", SLOW_CONFIG)
    before = appliance.config.read_bytes()

    t0 = time.monotonic()
    result = appliance.cli("migrate")

    assert result.returncode == 1, result.stderr
    assert time.monotonic() - t0 < 7
    assert "its Python code ran past the 0.3 s timeout" in result.stderr
    assert appliance.config.read_bytes() == before
    assert _failure(appliance)["phase"] == "timeout"


def test_a_migration_within_its_timeout_is_applied(appliance):
    appliance.configure('timeout = "5s"\n')
    appliance.write(
        "202401010001_quick.py",
        'component = "database"\n\n\ndef up(ctx, db):\n'
        "    import time\n    time.sleep(0.2)\n    db.execute('CREATE TABLE quick (x)')\n",
    )

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr
    assert "quick" in _tables(appliance)
