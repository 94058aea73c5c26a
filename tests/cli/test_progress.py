"""A batched state migration shows a progress line on a terminal, and only there (issue 16.18).

The CLI runs as a real subprocess whose stderr is the slave side of a pseudo-terminal, so
`isatty()` is true exactly as for an operator at a console; stdout stays a pipe.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time

import pytest
from conftest import FLYWALL, Appliance, lease_table_sql

ROWS, BATCH = 3000, 50
LEASES = lease_table_sql(ROWS, description="Lease records stored as JSON.")
RESHAPE = f'''\
"""Reshape lease records, in batches of {BATCH}."""
import time

component = "state"
depends_on = ["202401010001"]


def up(ctx, records):
    records.transform("leases", _up, batch_size={BATCH})


def _up(r):
    time.sleep(0.0004)  # a long migration: ~1.2 s, so the line is redrawn many times
    return {{"hw": r["mac"]}}
'''
PROGRESS = re.compile(r"\r  202401010002  (\d+)/3000 rows +(\d+)%  ([\d,]+) rows/s  ETA (\d+:\d\d)")


QUICK_RESHAPE = RESHAPE.replace("    time.sleep(0.0004)", "    # no sleep")
"""For the tests that demand no line: the first batch alone draws one on a terminal (the
line is drawn at once, then at most every 0.1 s), so no need to wait 1.2 s for more."""


@pytest.fixture
def box(appliance: Appliance) -> Appliance:
    appliance.write("202401010001_leases.sql", LEASES)
    appliance.write("202401010002_reshape_leases.py", RESHAPE)
    return appliance


@pytest.fixture
def quick_box(appliance: Appliance) -> Appliance:
    appliance.write("202401010001_leases.sql", LEASES)
    appliance.write("202401010002_reshape_leases.py", QUICK_RESHAPE)
    return appliance


def on_terminal(app: Appliance, *args: str) -> tuple[str, str, int, float]:
    """Run `flywall migration ARGS` with stderr on a pseudo-terminal.

    :returns: stdout, stderr, exit code, and how long it ran (seconds).
    """
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    began = time.monotonic()
    try:
        process = subprocess.run(
            [FLYWALL, "migration", "--root", str(app.root), *args],
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    finally:
        os.close(slave)
        reader.join(timeout=30)
        os.close(master)
    stderr = b"".join(chunks).decode().replace("\r\n", "\n")  # the tty's output processing
    return process.stdout.decode(), stderr, process.returncode, time.monotonic() - began


def test_a_terminal_shows_rows_percent_rate_and_eta_redrawn_in_place(box):
    stdout, stderr, code, seconds = on_terminal(box, "migrate")

    assert code == 0, stderr
    drawn = PROGRESS.findall(stderr)
    assert len(drawn) >= 3, stderr  # redrawn as batches commit
    done = [int(d) for d, *_ in drawn]
    assert done == sorted(done)
    assert all(int(d) % BATCH == 0 and int(p) == 100 * int(d) // ROWS for d, p, *_ in drawn)
    assert len(drawn) <= seconds / 0.1 + 1  # at most ~10 redraws a second, not one per batch
    assert all(int(rate.replace(",", "")) > 0 for _, _, rate, _ in drawn)
    # erased before the next line: what follows the last drawing is blanks and a return
    tail = stderr[stderr.rindex("\r  202401010002") :]
    assert re.fullmatch(r"\r  202401010002 [^\r\n]*\r +\r", tail), repr(tail)
    assert stderr.startswith("applying 202401010001 leases\napplying 202401010002 reshape_leases\n")
    assert stdout.startswith("applied 2 migrations (run ")


def test_no_progress_without_a_terminal(quick_box):
    result = subprocess.run(
        [FLYWALL, "migration", "--root", str(quick_box.root), "migrate"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "rows/s" not in result.stderr
    assert result.stderr == "applying 202401010001 leases\napplying 202401010002 reshape_leases\n"


@pytest.mark.parametrize("flag", ["--json", "--no-progress", "--events=jsonl"])
def test_no_progress_on_a_terminal_with_json_or_no_progress(quick_box, flag):
    stdout, stderr, code, _ = on_terminal(quick_box, "migrate", flag)

    assert code == 0, stderr
    assert "rows/s" not in stderr
    assert "\r" not in stderr
    assert "rows/s" not in stdout
