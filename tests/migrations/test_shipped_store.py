"""The shipped database and state migrations on Flywall's real store (issue 15, item 3).

A v0.2 box migrated by us must be what v0.3 makes of it at open: `changes.hash` added and
the chain filled in version order. The state migration fills an empty lease hostname
from the reservation of the same MAC, through the bucket helper (versions, change rows).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
from flywallstore import create_store, entries, independent_chain_problem, replay

from flywall.core.scripts.discovery import shipped_directory
from flywall.core.targets.store import check_chain, has_hash

if TYPE_CHECKING:
    from conftest import Appliance

HASH, FILL = "202602150001", "202602150002"


def shipped_store_box(app: Appliance, *, hashed: bool = False, leases: int = 90) -> None:
    """A box holding only the two shipped store migrations, over a v0.2 (or v0.3) store."""
    for version in (HASH, FILL):
        (source,) = Path(shipped_directory()).glob(f"{version}_*.py")
        shutil.copy(source, app.migrations_dir / source.name)
    app.state_db.parent.mkdir(parents=True, exist_ok=True)
    create_store(app.state_db, leases, hashed=hashed)


def leases(app: Appliance) -> dict[str, dict]:
    db = apsw.Connection(str(app.state_db))
    try:
        return {
            key: json.loads(value)
            for key, value in db.execute(
                "SELECT key, value FROM entries WHERE bucket = 'dhcp_leases'"
            )
        }
    finally:
        db.close()


def test_a_v02_store_gets_v03s_chain_and_its_hostnames_filled(appliance: Appliance) -> None:
    shipped_store_box(appliance)
    before = leases(appliance)
    empty = {k for k, v in before.items() if not v["hostname"]}
    assert empty

    migrate = appliance.cli("migrate")
    assert migrate.returncode == 0, migrate.stderr
    db = apsw.Connection(str(appliance.state_db))
    try:
        assert has_hash(db)
        assert check_chain(db) is None
        assert independent_chain_problem(db) is None
        assert replay(db) == {k: (v, ver) for k, (v, ver, _) in entries(db).items()}
        unhashed = db.execute("SELECT count(*) FROM changes WHERE hash IS NULL").fetchone()[0]
        assert unhashed == 0
    finally:
        db.close()
    after = leases(appliance)
    filled = {k for k in empty if after[k]["hostname"]}
    assert filled, "every third lease has a reservation"
    assert all(after[k]["hostname"].startswith("reserved-") for k in filled)
    assert {k: v for k, v in after.items() if k not in filled} == {
        k: v for k, v in before.items() if k not in filled
    }
    assert appliance.cli("validate").returncode == 0

    rollback = appliance.cli("rollback", "--to", "000000000000")
    assert rollback.returncode == 0, rollback.stderr
    assert leases(appliance) == before
    db = apsw.Connection(str(appliance.state_db))
    try:
        assert not has_hash(db)  # v0.2's shape again; v0.3 fills it at open
    finally:
        db.close()


def test_on_a_v03_store_the_chain_is_kept_as_it_is(appliance: Appliance) -> None:
    shipped_store_box(appliance, hashed=True)
    db = apsw.Connection(str(appliance.state_db))
    hashes = db.execute("SELECT id, hash FROM changes ORDER BY id").fetchall()
    db.close()
    appliance.migrate()
    db = apsw.Connection(str(appliance.state_db))
    try:
        kept = db.execute("SELECT id, hash FROM changes ORDER BY id").fetchall()
        assert kept[: len(hashes)] == hashes
        assert check_chain(db) is None
    finally:
        db.close()


def test_the_shipped_store_migrations_do_nothing_on_a_plain_database(
    appliance: Appliance,
) -> None:
    for version in (HASH, FILL):
        (source,) = Path(shipped_directory()).glob(f"{version}_*.py")
        shutil.copy(source, appliance.migrations_dir / source.name)
    appliance.migrate()
    assert "nothing to do" in appliance.cli("log", HASH).stdout
    assert "nothing to fill" in appliance.cli("log", FILL).stdout


def test_test_isolation_works_for_every_shipped_migration(tmp_path: Path) -> None:
    """Each shipped migration, alone on Flywall's empty store with what precedes it applied,
    goes up and down and leaves the schema as it found it (issue 15, item 5).

    Through the commands API, the function `flywall migration test --isolation V` calls
    and whose `exit_code` it exits with (the CLI's own exit codes: tests/core/rehearsal/test_trial.py).
    """
    from templates import build_demo

    from flywall.core import commands
    from flywall.core.appliance.workspace import Workspace
    from flywall.core.scripts.discovery import discover

    build_demo(tmp_path / "box")
    for m in discover([shipped_directory()]):
        report = commands.test(Workspace.load(tmp_path / "box"), "isolation", m.version)
        assert report.exit_code == 0, (m.version, report)
