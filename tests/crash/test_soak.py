"""Random-kill soak: SIGKILL `migrate` and `rollback` at random moments on the demo tree.

Named crash points cut where we think the danger is; this cuts anywhere, including
inside SQLite (and inside Python's start-up under FLYWALL_TEST_EXEC=1; the fork server's
children start with their imports done). After every kill the files must satisfy the
invariants, and at the end one uninterrupted `migrate` must reach exactly what a clean
run reaches. Bounded in the default suite; `FLYWALL_TORTURE=long` runs it for real.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import forkserver
import pytest
from conftest import FLYWALL, Appliance
from crashkit import check_after_cut, check_settled, observe
from torture import LONG

ITERATIONS = 300 if LONG else 16

VENDOR_MIGRATION = '''\
"""Vendor table {n} with rows."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE vendor_{n} (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(200):
        db.execute("INSERT INTO vendor_{n} (v) VALUES (?)", (f"row-{{i}}",))


def down(ctx, db):
    db.execute("DROP TABLE vendor_{n}")
'''


def demo_appliance(where: Path) -> Appliance:
    """The demo tree plus ten vendor migrations, so a run has many moments to die in."""
    demo = [FLYWALL, "migration", "demo", "--layout", "seed", str(where)]
    assert forkserver.run(demo).returncode == 0
    app = Appliance(where)
    for n in range(10):
        app.write(f"2024020100{n:02d}_vendor_{n}.py", VENDOR_MIGRATION.format(n=n))
    return app


def run_and_kill(app: Appliance, args: list[str], after: float) -> int:
    """Start the CLI, SIGKILL it `after` seconds later if still running; return its code."""
    process = forkserver.popen(
        [FLYWALL, "migration", "--root", str(app.root), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(after)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    return process.wait()


@pytest.mark.torture
def test_random_sigkills_during_migrate_and_rollback_never_break_an_invariant(
    tmp_path: Path,
) -> None:
    reference_app = demo_appliance(tmp_path / "reference")
    started = time.monotonic()
    assert reference_app.cli("migrate").returncode == 0
    duration = time.monotonic() - started
    reference = observe(reference_app.root)

    app = demo_appliance(tmp_path / "soak")
    rng = random.Random(int(os.environ.get("FLYWALL_SOAK_SEED", "1126")))
    kills, violations = 0, []
    for i in range(ITERATIONS):
        args = ["migrate"] if i % 2 == 0 else ["rollback", "--to", "000000000000"]
        code = run_and_kill(app, args, rng.uniform(0.0, duration * 1.2))
        kills += code == -signal.SIGKILL
        assert code in (0, 2, -signal.SIGKILL), f"iteration {i}: {args} exited {code}"
        violations += [f"iteration {i} ({args[0]}): {p}" for p in check_after_cut(app.root)]

    final = app.cli("migrate")
    assert final.returncode == 0, final.stderr
    violations += check_settled(app.root, reference)
    print(f"\nsoak: {ITERATIONS} iterations, {kills} killed mid-run, violations {len(violations)}")
    assert violations == []
    assert kills > 0, "no iteration was killed mid-run: the soak tested nothing"
