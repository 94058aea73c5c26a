"""Bucket migrations through the real CLI on a Flywall-shaped state.db: run, roll back, kill.

Each command is a subprocess (`flywall migration ...`); a kill is FLYWALL_CRASH_AT at
every crash point the command reaches (listed by FLYWALL_CRASH_LIST), then the same
command again. The store must end as an uninterrupted run leaves it: the same entries
(values, versions, expiry), the same change log but for its timestamps, an intact chain.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import apsw
import pytest
from crashkit import check_after_cut, cuts, killed, observe
from flywallstore import create_store, entries, log, replay

from flywall.core.targets.store import check_chain

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Appliance

V = "202401010001"

FILL_HOSTNAMES = '''\
"""Fill an empty lease hostname from the reservation of its MAC."""
component = "state"


def up(ctx, records):
    reserved = {}
    for key, value in records.db.execute(
        "SELECT key, value FROM entries WHERE bucket = 'dhcp_reserved'"
    ):
        reserved[key] = __import__("json").loads(value)["hostname"]

    def fill(lease):
        if lease["hostname"] or lease["mac"] not in reserved:
            return None
        return lease | {"hostname": reserved[lease["mac"]], "hostname_from": "reserved"}

    ctx.log(f"filled {records.bucket('dhcp_leases').transform(fill, batch_size=25)} hostnames")


def down(ctx, records):
    def empty(lease):
        if lease.get("hostname_from") != "reserved":
            return None
        return {k: v for k, v in lease.items() if k != "hostname_from"} | {"hostname": ""}

    records.bucket("dhcp_leases").transform(empty, batch_size=25)
'''


def flywall_box(app: Appliance, leases: int = 200, *, hashed: bool = True) -> None:
    app.state_db.parent.mkdir(parents=True, exist_ok=True)
    create_store(app.state_db, leases, hashed=hashed)
    app.write(f"{V}_fill_hostnames.py", FILL_HOSTNAMES)


def settled(app: Appliance) -> dict[str, Any]:
    """What must match an uninterrupted run: entries, the log but for times, the chain."""
    db = apsw.Connection(str(app.state_db))
    try:
        seen = {
            "entries": entries(db),
            "log": log(db),
            "chain": check_chain(db),
            "replay": replay(db) == {k: (v, ver) for k, (v, ver, _) in entries(db).items()},
            "timestamps": db.execute(
                "SELECT count(*) FROM entries WHERE updated_at NOT LIKE '20__-__-__ __:__:__%UTC'"
            ).fetchone()[0],
        }
    finally:
        db.close()
    seen["states"] = observe(app.root).states
    return seen


@pytest.mark.parametrize("hashed", [True, False], ids=["v0.3", "v0.2"])
def test_migrate_and_rollback_keep_the_chain_and_validate_says_so(
    appliance: Appliance, *, hashed: bool
) -> None:
    flywall_box(appliance, hashed=hashed)
    before = settled(appliance)

    appliance.migrate()
    up = settled(appliance)
    report = json.loads(appliance.cli("validate", "--json").stdout)
    assert report["checks"]["change log"] == "ok"
    assert report["ok"] is True
    filled = [v for v, _, _ in up["entries"].values() if v.get("hostname_from")]
    assert len(filled) > 30
    assert "filled" in appliance.cli("log", V).stdout
    assert appliance.cli("rollback", "--to", "000000000000").returncode == 0

    down = settled(appliance)
    assert {k: v[0] for k, v in down["entries"].items()} == {
        k: v[0] for k, v in before["entries"].items()
    }
    assert down["log"][: len(up["log"])] == up["log"]  # the log only grows
    assert len(down["log"]) == len(before["log"]) + 2 * len(filled)
    for seen in (up, down):
        assert seen["chain"] is None
        assert seen["replay"] is True
        assert seen["timestamps"] == 0


def test_validate_names_the_first_bad_change_row(appliance: Appliance) -> None:
    flywall_box(appliance)
    appliance.migrate()
    db = apsw.Connection(str(appliance.state_db))
    db.execute("UPDATE changes SET value = CAST('{}' AS BLOB) WHERE id = 77")
    db.close()

    result = appliance.cli("validate")

    assert result.returncode == 4
    assert "change log: changes row 77 (" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_plain_state_db_has_no_change_log_check(appliance: Appliance) -> None:
    appliance.state_db.parent.mkdir(parents=True, exist_ok=True)
    apsw.Connection(str(appliance.state_db)).execute("CREATE TABLE entries (k, v)")
    report = json.loads(appliance.cli("validate", "--json").stdout)
    assert "change log" not in report["checks"]


def prepared_rollback(app: Appliance) -> None:
    flywall_box(app)
    app.migrate()


@pytest.mark.torture
@pytest.mark.parametrize(
    ("prepare", "command"),
    [(flywall_box, ("migrate",)), (prepared_rollback, ("rollback", "--to", "000000000000"))],
    ids=["migrate", "rollback"],
)
def test_a_kill_at_every_crash_point_ends_in_the_uninterrupted_store(
    appliance: Appliance, tmp_path: Path, prepare: Any, command: tuple[str, ...]
) -> None:
    from conftest import Appliance

    prepare(appliance)
    template = appliance.root

    def copy(name: str) -> Appliance:
        shutil.copytree(template, tmp_path / name)
        return Appliance(tmp_path / name)

    reference = copy("reference")  # listing the points leaves what an uncut run leaves
    listing = tmp_path / "points.txt"
    assert reference.cli(*command, env={"FLYWALL_CRASH_LIST": str(listing)}).returncode == 0
    expected = settled(reference)
    assert expected["chain"] is None
    assert expected["replay"] is True

    points = [line.replace(" ", ":") for line in listing.read_text().splitlines()]
    batches = [p for p in points if p.startswith("state-batch-committed:")]
    assert len(batches) >= 7, points  # every batch boundary is among them
    violations: dict[str, list[str]] = {}
    chosen = cuts(points)
    for i, (point, env) in enumerate(chosen):
        app = copy(f"cut-{i}")
        cut = app.cli(*command, env={"FLYWALL_CRASH_AT": point, **env})
        assert killed(cut), f"{point} was listed but not reached: {cut.stderr}"
        problems = check_after_cut(app.root)
        boot = app.cli("recover", env=env)  # as a boot would: recovery alone must finish it
        if boot.returncode != 0:
            problems.append(f"recover exit {boot.returncode}: {boot.stderr.strip()}")
        problems += [f"after recover: {p}" for p in check_after_cut(app.root, settled=True)]
        seen = settled(app)
        if seen["chain"] is not None or seen["replay"] is not True:
            problems.append(f"after recover: chain {seen['chain']}, replay {seen['replay']}")
        rerun = app.cli(*command, env=env)
        if rerun.returncode == 2:  # the cut came after the work: nothing left to roll back
            assert "nothing to roll back" in rerun.stderr, rerun.stderr
        elif rerun.returncode != 0:
            problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip()}")
        seen = settled(app)
        problems += [f"{k} differs" for k in expected if seen[k] != expected[k]]
        if problems:
            violations[point] = problems
    print(
        f"\nbucket {command[0]}: {len(chosen)} kills at {len({p for p, _ in chosen})} of "
        f"{len(points)} crash points x SIGKILL, violations {len(violations)}"
    )
    assert violations == {}
