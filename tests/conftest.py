"""Shared fixtures: a whole appliance tree in tmp_path, migrations written from strings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import forkserver
import pytest

from flywall.core import commands
from flywall.core.appliance.workspace import Workspace

if TYPE_CHECKING:
    from flywall.core.runtime.engine import RunReport

FLYWALL = str(Path(sys.executable).with_name("flywall"))

BASE_CONFIG = """\
# test appliance
schema_version = "1.0"
"""

BASE_SETTINGS = """\
migration {
  include_shipped = false
%s}
"""


@dataclass
class Appliance:
    """An appliance tree under `root`, with helpers to add migrations and run the CLI."""

    root: Path

    @property
    def migrations_dir(self) -> Path:
        return self.root / "etc/flywall/migrations"

    @property
    def state_db(self) -> Path:
        return self.root / "var/lib/flywall/state.db"

    @property
    def journal(self) -> Path:
        return self.root / "var/lib/flywall/migration-journal.db"

    @property
    def config(self) -> Path:
        return self.root / "etc/flywall/flywall.hcl"

    @property
    def settings(self) -> Path:
        return self.root / "etc/flywall/migration.hcl"

    def configure(self, extra: str = "") -> None:
        """Rewrite migration.hcl with `extra` lines inside its block (flywall.hcl if none)."""
        self.settings.parent.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self.config.write_text(BASE_CONFIG, encoding="utf-8")
        self.settings.write_text(BASE_SETTINGS % textwrap.indent(extra, "  "), encoding="utf-8")

    def write(self, name: str, text: str) -> Path:
        """Write a migration file from an inline (dedented) string."""
        self.migrations_dir.mkdir(parents=True, exist_ok=True)
        path = self.migrations_dir / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def workspace(self) -> Workspace:
        return Workspace.load(self.root)

    def migrate(self, target: str | None = None) -> RunReport:
        """Apply pending migrations in this process, through the commands API.

        For setup, where the command line is not what a test is about: a real subprocess
        costs a second of interpreter start-up under load, the same run here a fifth of
        that. The run must end as `migrate` exiting 0 would (completed, or nothing to do).
        """
        report = commands.migrate(self.workspace(), target=target)
        assert report.outcome in ("completed", "nothing_to_do"), report
        return report

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `flywall migration --root ROOT ARGS` as a real process (tests/forkserver.py:
        forked from a server that has imported the CLI, or exec'd where the test needs it)."""
        return forkserver.run(
            [FLYWALL, "migration", "--root", str(self.root), *args],
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )


@pytest.fixture(autouse=True, scope="session")
def _fork_server() -> Iterator[None]:
    """Each worker's fork server starts with the session, before any test's clock runs, and
    is reaped at its end (so its cpu and its children's count as the worker's)."""
    forkserver.start()
    # The switch itself leaves the environment the tests and their children see: the status
    # memo keys on every FLYWALL_* variable, so a test that strips them for a child would
    # never find that child's memo (xdist's workers have read it by now).
    os.environ.pop("FLYWALL_TEST_EXEC", None)
    yield
    forkserver.stop()


@pytest.fixture(autouse=True)
def _real_exec_where_the_start_is_tested(request: pytest.FixtureRequest) -> Iterator[None]:
    """The files in `forkserver.REAL_EXEC` test a process start itself: exec their children."""
    where = request.path.relative_to(Path(__file__).parent).as_posix()
    with forkserver.real_exec(where in forkserver.REAL_EXEC):
        yield


@pytest.fixture
def appliance(tmp_path: Path) -> Appliance:
    """An empty appliance (no shipped migrations) with a config file."""
    app = Appliance(tmp_path / "appliance")
    app.configure()
    app.migrations_dir.mkdir(parents=True)
    return app


def create_table_migration(app: Appliance, version: str, table: str) -> Path:
    """Write a SQL migration that creates (and drops) `table`."""
    return app.write(
        f"{version}_create_{table}.sql",
        f"""\
        -- Create {table}.
        -- migrate:up
        CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT);
        -- migrate:down
        DROP TABLE {table};
        """,
    )


def lease_table_sql(rows: int, *, ttl: bool = False, description: str = "Lease records.") -> str:
    """A SQL migration creating `leases` with `rows` JSON records {mac[, ttl]}: batched steps' input."""
    fields = "'mac', printf('aa:%04d', i)" + (", 'ttl', i" if ttl else "")
    return f"""\
-- {description}
-- migrate:up
CREATE TABLE leases (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
INSERT INTO leases (data) SELECT json_object({fields}) FROM n;
-- migrate:down
DROP TABLE leases;
"""


HOLD_THE_LOCK = '''\
"""Hold the writer lock until the test releases it."""
import time
from pathlib import Path

component = "database"


def up(ctx, db):
    Path({started!r}).touch()
    deadline = time.monotonic() + 30
    while not Path({release!r}).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
'''


def hold_lock_migration(app: Appliance, version: str, started: Path, release: Path) -> Path:
    """Write a migration that touches `started`, then holds the lock until `release` exists."""
    text = HOLD_THE_LOCK.format(started=str(started), release=str(release))
    return app.write(f"{version}_hold_the_lock.py", text)
