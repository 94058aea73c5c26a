"""A batched state step cut between batches is finished by recovery (issue 13, bug 1).

Its committed batches are in the new shape and the rest in the old: neither "applied" nor
"rolled back" is true of the records until the step is finished. Recovery resumes it from
its checkpoint, in both directions, so the records end in one shape and the journal says
which; `validate` names a checkpoint the journal disagrees with, and the next writing
command repairs a box an earlier release left that way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import apsw
from conftest import lease_table_sql
from crashkit import killed

from flywall.core import commands
from flywall.core.model import events as ev
from flywall.core.runtime.engine import Engine

if TYPE_CHECKING:
    from conftest import Appliance

ROWS, BATCH = 300, 20  # 15 batches each way

LEASES = lease_table_sql(ROWS, ttl=True, description="Lease records stored as JSON.")

RESHAPE = f'''\
"""Reshape lease records, in batches of {BATCH}."""
import os

component = "state"
depends_on = ["202401010001"]


def up(ctx, records):
    records.transform("leases", _up, batch_size={BATCH})


def down(ctx, records):
    records.transform("leases", _down, batch_size={BATCH})


def _up(r):
    return None if "hw" in r else {{"hw": r["mac"], "ttl": r["ttl"]}}


def _down(r):
    if os.environ.get("BREAK_DOWN_AT") == str(r.get("ttl")):
        raise RuntimeError("down cannot reshape this one")
    return None if "mac" in r else {{"mac": r["hw"], "ttl": r["ttl"]}}
'''
STATE = "202401010002"


def _app(appliance: Appliance) -> Appliance:
    appliance.write("202401010001_leases.sql", LEASES)
    appliance.write(f"{STATE}_reshape_leases.py", RESHAPE)
    return appliance


def shapes(app: Appliance) -> dict[str, int]:
    """How many records carry each shape's key."""
    db = apsw.Connection(str(app.state_db))
    try:
        counts = {"mac": 0, "hw": 0}
        for (data,) in db.execute("SELECT data FROM leases"):
            counts["hw" if "hw" in json.loads(data) else "mac"] += 1
        return counts
    finally:
        db.close()


def checkpoints(app: Appliance) -> list[tuple]:
    db = apsw.Connection(str(app.state_db))
    try:
        return db.execute("SELECT step, tbl, rows FROM flywall_batches").fetchall()
    except apsw.SQLError:
        return []
    finally:
        db.close()


def state_of(app: Appliance, version: str) -> str:
    """The state `list` shows for `version` (read in this process)."""
    return next(m.state for m in commands.list_migrations(app.workspace()) if m.version == version)


def test_recover_finishes_a_batched_rollback_cut_between_batches(appliance: Appliance) -> None:
    app = _app(appliance)
    app.migrate()
    assert shapes(app) == {"mac": 0, "hw": ROWS}
    cut = app.cli("rollback", STATE, env={"FLYWALL_CRASH_AT": "after-BatchCommitted:3"})
    assert killed(cut), cut.stderr
    assert shapes(app) == {"mac": 3 * BATCH, "hw": ROWS - 3 * BATCH}

    status = app.cli("status")
    assert "recovery will decide rolled_back by finishing it from its checkpoint" in status.stdout

    recover_finishes_the_rollback(app)
    history = commands.history(app.workspace())
    (recovered,) = [e for e in history if e["kind"] == "Recovered"]
    assert recovered["evidence"]["action"] == "resume"
    assert recovered["evidence"][f"checkpoint {STATE}:down leases"].startswith("60 rows")
    batches = [
        e for e in history if e["kind"] == "BatchCommitted" and e["run_id"] != cut_run(history)
    ]
    assert batches, "the resumed batches are journaled as they commit"
    # the step is over: migrating again re-applies it from the start, all records
    app.migrate()
    assert shapes(app) == {"mac": 0, "hw": ROWS}


def recover_finishes_the_rollback(app: Appliance) -> None:
    """`recover` alone: every record back in the old shape, no checkpoint, rolled back."""
    recover = app.cli("recover")
    assert recover.returncode == 0, recover.stderr
    assert f"recovered {STATE}: rolled_back" in recover.stdout
    assert shapes(app) == {"mac": ROWS, "hw": 0}
    assert checkpoints(app) == []
    assert state_of(app, STATE) == "rolled_back"
    assert app.cli("validate").returncode == 0


def cut_run(history: list[dict]) -> str:
    """The run of the first rollback (the one that was cut)."""
    return next(
        e["run_id"] for e in history if e["kind"] == "RunStarted" and e["command"] == "rollback"
    )


def test_recover_finishes_a_batched_up_cut_between_batches(appliance: Appliance) -> None:
    app = _app(appliance)
    cut = app.cli("migrate", env={"FLYWALL_CRASH_AT": "state-batch-committed:4"})
    assert killed(cut), cut.stderr
    assert shapes(app) == {"mac": ROWS - 4 * BATCH, "hw": 4 * BATCH}
    recover = app.cli("recover")
    assert recover.returncode == 0, recover.stderr
    assert f"recovered {STATE}: applied" in recover.stdout
    assert shapes(app) == {"mac": 0, "hw": ROWS}
    assert checkpoints(app) == []
    assert state_of(app, STATE) == "applied"
    assert app.cli("validate").returncode == 0


def test_without_resume_on_crash_a_cut_up_is_failed_and_migrate_goes_on(
    appliance: Appliance,
) -> None:
    app = _app(appliance)
    app.configure("state {\n  resume_on_crash = false\n}\n")
    cut = app.cli("migrate", env={"FLYWALL_CRASH_AT": "state-batch-committed:4"})
    assert killed(cut), cut.stderr
    recover = app.cli("recover")
    assert f"recovered {STATE}: failed" in recover.stdout
    assert shapes(app) == {"mac": ROWS - 4 * BATCH, "hw": 4 * BATCH}
    assert checkpoints(app) == [(f"{STATE}:up", "leases", 4 * BATCH)]
    assert app.cli("validate").returncode == 0, "a failed up's checkpoint is expected"
    app.migrate()
    assert shapes(app) == {"mac": 0, "hw": ROWS}
    assert checkpoints(app) == []


def test_a_rollback_an_older_recovery_left_half_done_is_named_and_finished(
    appliance: Appliance,
) -> None:
    """The repair path: the journal says applied, the checkpoint says a down was under way."""
    app = hit_by_the_old_recovery(appliance)
    assert state_of(app, STATE) == "applied"
    assert shapes(app) == {"mac": 2 * BATCH, "hw": ROWS - 2 * BATCH}

    validate = app.cli("validate")
    assert validate.returncode == 4, validate.stdout
    assert (
        f"leases: a batched down of {STATE} stopped after 40 rows but the journal says applied"
        in validate.stdout
    )

    recover_finishes_the_rollback(app)
    logs = app.cli("log", STATE).stdout
    assert "finishing a rollback cut after 40 rows of leases" in logs


def test_migrate_also_repairs_a_half_done_rollback_then_applies_again(
    appliance: Appliance,
) -> None:
    app = hit_by_the_old_recovery(appliance)
    migrate = app.cli("migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert shapes(app) == {"mac": 0, "hw": ROWS}
    assert checkpoints(app) == []
    history = commands.history(app.workspace(), migration=STATE)
    outcomes = [
        (e["kind"], e.get("decision"))
        for e in history
        if e["kind"] in ("Recovered", "MigrationApplied")
    ]
    # the old release's "applied", the repair's "rolled_back", then migrate's apply
    assert outcomes[-3:] == [
        ("Recovered", "applied"),
        ("Recovered", "rolled_back"),
        ("MigrationApplied", None),
    ]


def hit_by_the_old_recovery(appliance: Appliance) -> Appliance:
    """A box as bug 1 left it: a rollback cut after two batches, recovered as "applied"."""
    app = _app(appliance)
    app.migrate()
    cut = app.cli("rollback", STATE, env={"FLYWALL_CRASH_AT": "after-BatchCommitted:2"})
    assert killed(cut), cut.stderr
    old_release_recovers(app)
    return app


def old_release_recovers(app: Appliance) -> None:
    """Journal what recovery decided before the fix: the cut down never started."""
    with Engine(app.workspace(), "recover") as engine:
        interrupted_run = engine.state.record(STATE).last_run
        recovered = ev.Recovered(
            direction="down",
            decision="applied",
            evidence={"marker": "present"},
            interrupted_run=interrupted_run,
        )
        engine.recorder.append([(STATE, recovered)])
        engine.recorder.close_interrupted_run(interrupted_run)
        engine.recorder.finish("completed", [])


def test_a_resume_that_fails_is_journaled_and_its_checkpoint_named(appliance: Appliance) -> None:
    app = _app(appliance)
    app.migrate()
    cut = app.cli("rollback", STATE, env={"FLYWALL_CRASH_AT": "after-BatchCommitted:2"})
    assert killed(cut), cut.stderr
    recover = app.cli("recover", env={"BREAK_DOWN_AT": "200"})
    assert recover.returncode == 1
    assert recover.stderr.strip().splitlines()[-1] == (
        f"FAILED: migration {STATE} failed during recovery of its down: ResumeFailed: "
        "could not finish it: RuntimeError: down cannot reshape this one"
    )
    assert state_of(app, STATE) == "applied"
    history = commands.history(app.workspace())
    failed = [e for e in history if e["kind"] == "MigrationFailed"]
    assert [f["direction"] for f in failed] == ["down"]
    validate = app.cli("validate")
    assert validate.returncode == 4
    assert f"`rollback {STATE}` goes on from the checkpoint" in validate.stdout
    rollback = app.cli("rollback", STATE)
    assert rollback.returncode == 0, rollback.stderr
    assert shapes(app) == {"mac": ROWS, "hw": 0}
