"""The boot path does not grow with history (issue 18.1).

Every writer checks the journal's chain before it writes, but walks only the events after
the chain's verified point (`flywall.journal.verified`, recorded by
`flywall.core.runtime.chaincheck`); `journal verify` and `validate` still walk all of it.
"""

from __future__ import annotations

import collections
import re
import subprocess
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING

import apsw
import pytest

from flywall.core import commands
from flywall.core.model import events as ev
from flywall.core.runtime.chaincheck import RECORD_AFTER
from flywall.journal import ChainEnd, Entry, event_hash, verified
from tests.conftest import Appliance, create_table_migration

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY_HEX = "8f" * 32
FILLER = RECORD_AFTER + 200
"""Events of history appended below: more than one walk records a point after."""


def with_device_key(app: Appliance) -> None:
    key = app.root / "etc/flywall/device.key"
    key.write_text(KEY_HEX + "\n")
    key.chmod(0o600)
    app.configure('device_key_file = "device.key"\n')


def history(app: Appliance, events: int) -> None:
    """Append `events` audit events, as a box's long life of `validate` runs leaves them."""
    ws = app.workspace()
    body = ev.encode(ev.ValidationPerformed(checks={"journal": "ok"}, ok=True))
    entries = [Entry("ValidationPerformed", body) for _ in range(events)]
    with ws.write_journal() as journal:
        for start in range(0, events, 500):
            journal.append(entries[start : start + 500])


def lived_box(app: Appliance, *, keyed: bool = False) -> Appliance:
    """Two migrations applied, then FILLER events of history; one boot records the point."""
    if keyed:
        with_device_key(app)
    create_table_migration(app, "202401010001", "hosts")
    create_table_migration(app, "202401010002", "leases")
    app.migrate()
    history(app, FILLER)
    app.migrate()  # nothing to do: walks the history, records the point, saves the snapshot
    assert point(app) == snapshot_seq(app) == head(app)
    return app


def point(app: Appliance) -> int | None:
    with app.workspace().read_journal() as journal:  # type: ignore[union-attr]
        end = journal.verified_point()
    return None if end is None else end.seq


def head(app: Appliance) -> int:
    with app.workspace().read_journal() as journal:  # type: ignore[union-attr]
        return journal.head()[0]


def tamper(app: Appliance, seq: int, sql: str = "at_ns = at_ns + 1") -> None:
    """Rewrite row `seq` behind the journal's back, as someone editing the file would."""
    with closing(apsw.Connection(str(app.journal))) as raw:
        raw.execute("DROP TRIGGER events_refuse_update")
        raw.execute(f"UPDATE events SET {sql} WHERE seq = ?", (seq,))


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    return result.stderr


# -- what each check still catches ------------------------------------------------------


def test_a_tampered_event_before_the_verified_point_is_caught_by_journal_verify_and_validate(
    appliance: Appliance,
) -> None:
    lived_box(appliance)
    tamper(appliance, 5)

    verify = appliance.cli("journal", "verify")
    validate = appliance.cli("validate")

    assert one_line(verify, 4) == (
        "FAILED: journal is corrupt at seq 5: hash does not match the event's content\n"
    )
    assert validate.returncode == 4
    assert "journal is corrupt at seq 5" in validate.stdout + validate.stderr
    # The trade-off that keeps a boot independent of history: a writer walks only the tail,
    # so the rewrite of an old event is left to `journal verify` and `validate`.
    assert appliance.cli("migrate").returncode == 0


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
@pytest.mark.parametrize("command", ["migrate", "recover"])
def test_a_tampered_event_after_the_verified_point_is_refused_by_the_boot_path(
    appliance: Appliance, command: str, keyed: bool
) -> None:
    lived_box(appliance, keyed=keyed)
    history(appliance, 3)
    tail = head(appliance) - 1
    tamper(appliance, tail)

    result = appliance.cli(command)

    assert one_line(result, 4) == (
        f"FAILED: journal is corrupt at seq {tail}: hash does not match the event's content\n"
    )


def test_rewriting_the_event_at_the_verified_point_is_caught_by_the_boot_path(
    appliance: Appliance,
) -> None:
    """The point is trusted only while its event still carries its hash: else a whole walk."""
    lived_box(appliance)
    at = point(appliance)
    assert at is not None
    tamper(appliance, at, "hash = zeroblob(32)")

    result = appliance.cli("migrate")

    assert one_line(result, 4) == (
        f"FAILED: journal is corrupt at seq {at}: hash does not match the event's content\n"
    )


def rechain_from(app: Appliance, seq: int) -> None:
    """Alter row `seq` and recompute every later hash without a key: all a file writer can."""
    with closing(apsw.Connection(str(app.journal))) as raw:
        raw.execute("DROP TRIGGER events_refuse_update")
        rows = list(
            raw.execute(
                "SELECT seq, at_ns, run_id, migration, kind, body, prev_hash FROM events "
                "WHERE seq >= ? ORDER BY seq",
                (seq,),
            )
        )
        prev = rows[0][6]
        for s, at_ns, run_id, migration, kind, body, _ in rows:
            run = run_id + "x" if s == seq else run_id
            digest = event_hash(prev, s, at_ns, kind, run, migration, body)
            raw.execute(
                "UPDATE events SET run_id = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (run, prev, digest, s),
            )
            prev = digest
        end = ChainEnd(rows[-1][0], prev, 1)
        # ... and a verified point at the new head, sealed with every key but the device's
        raw.execute(
            "INSERT OR REPLACE INTO snapshots (name, seq, hash, body) VALUES (?, ?, ?, ?)",
            (verified.ROW, end.seq, end.hash, verified.seal(end, bytes(32))),
        )


def test_a_verified_point_forged_without_the_device_key_is_not_trusted(
    appliance: Appliance,
) -> None:
    """A file writer who rewrites the tail cannot also move the point past it."""
    lived_box(appliance, keyed=True)
    history(appliance, 3)
    tail = head(appliance) - 1
    rechain_from(appliance, tail)

    result = appliance.cli("recover")

    assert one_line(result, 4) == (
        f"FAILED: journal is corrupt at seq {tail}: hash does not match the event's content\n"
    )


def test_a_damaged_or_foreign_verified_point_means_a_whole_walk_never_an_error(
    appliance: Appliance,
) -> None:
    lived_box(appliance)
    with closing(apsw.Connection(str(appliance.journal))) as raw:
        raw.execute("UPDATE snapshots SET body = zeroblob(40) WHERE name = ?", (verified.ROW,))
    assert point(appliance) is None

    with reads() as count:
        commands.migrate(appliance.workspace())

    assert count["events"] >= FILLER  # walked from seq 1 ...
    assert point(appliance) == head(appliance)  # ... and recorded a sound point again


# -- the boot path reads O(tail) events ---------------------------------------------------


class _Reads:
    """Rows that statements reading the journal's `events` table returned."""

    def __init__(self) -> None:
        self.sql: dict[int, str] = {}
        self.rows: collections.Counter[str] = collections.Counter()

    def __call__(self, trace: dict[str, object]) -> None:
        if trace["code"] == apsw.SQLITE_TRACE_STMT:
            self.sql[trace["id"]] = str(trace["sql"])  # type: ignore[index]
        elif trace["code"] == apsw.SQLITE_TRACE_ROW:
            sql = self.sql.get(trace["id"], "")  # type: ignore[arg-type]
            if re.search(r"\bevents\b", sql):
                self.rows["events"] += 1

    def hook(self, conn: apsw.Connection) -> None:
        conn.trace_v2(apsw.SQLITE_TRACE_STMT | apsw.SQLITE_TRACE_ROW, self)


@contextmanager
def reads() -> Iterator[collections.Counter[str]]:
    """Count the journal's event rows every SQLite connection opened meanwhile reads."""
    tracer = _Reads()
    apsw.connection_hooks.append(tracer.hook)
    try:
        yield tracer.rows
    finally:
        apsw.connection_hooks.remove(tracer.hook)


@pytest.mark.parametrize("tail", [0, 1, 37, RECORD_AFTER // 2])
def test_a_boot_reads_the_events_after_the_verified_point_not_the_history(
    appliance: Appliance, tail: int
) -> None:
    """`migrate` and `recover` with nothing to do read O(tail) event rows, whatever the history.

    The tail (events after the verified point and the projection snapshot, both at the head
    once a boot walked the history) is walked once for the chain and replayed once.
    """
    lived_box(appliance)
    history(appliance, tail)
    ws = appliance.workspace()

    with reads() as first:
        assert commands.migrate(ws).outcome == "nothing_to_do"
    with reads() as second:
        assert commands.recover(appliance.workspace()).outcome == "nothing_to_do"

    for count in (first, second):
        assert tail <= count["events"] <= 2 * tail + 5, count
    assert head(appliance) > FILLER  # the history they did not read


def test_a_long_tail_moves_the_point_and_the_snapshot_so_the_next_boot_reads_none_of_it(
    appliance: Appliance,
) -> None:
    lived_box(appliance)
    history(appliance, RECORD_AFTER)

    with reads() as walked:
        commands.migrate(appliance.workspace())
    with reads() as after:
        commands.migrate(appliance.workspace())

    assert walked["events"] >= 2 * RECORD_AFTER  # walked, and replayed past the snapshot
    assert point(appliance) == snapshot_seq(appliance) == head(appliance)
    assert after["events"] <= 5  # the point's and the snapshot's own rows


# -- crash safety of the point's write ----------------------------------------------------


def snapshot_seq(app: Appliance) -> int | None:
    with closing(apsw.Connection(str(app.journal))) as raw:
        row = raw.execute("SELECT seq FROM snapshots WHERE name = 'projection'").fetchone()
    return None if row is None else row[0]


@pytest.mark.parametrize(
    "crash_at",
    [
        "before-verified-point",
        "after-verified-point",
        "before-snapshot-catch-up",
        "after-snapshot-catch-up",
    ],
)
def test_a_kill_around_the_boot_paths_cache_writes_leaves_a_box_that_boots(
    appliance: Appliance, tmp_path: Path, crash_at: str
) -> None:
    """Both writes are derived caches: a kill before, or after, each costs a walk, no more."""
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    history(appliance, FILLER)
    reached = tmp_path / "points.txt"

    killed = appliance.cli(
        "migrate", env={"FLYWALL_CRASH_AT": crash_at, "FLYWALL_CRASH_LIST": str(reached)}
    )

    assert killed.returncode == -9, killed.stderr
    assert f"{crash_at} 1\n" in reached.read_text()
    recorded = crash_at != "before-verified-point"
    assert point(appliance) == (head(appliance) if recorded else None)
    caught_up = crash_at == "after-snapshot-catch-up"
    assert (snapshot_seq(appliance) == head(appliance)) is caught_up
    again = appliance.cli("migrate")
    assert (again.returncode, again.stdout, again.stderr) == (0, "nothing to do\n", "")
    assert point(appliance) == snapshot_seq(appliance) == head(appliance)
    assert appliance.cli("journal", "verify").returncode == 0


# -- the point at the end of a long run ---------------------------------------------------

CHATTY = '''\
"""Log one line per host: a run that appends more events than a walk records a point after."""
component = "database"


def up(ctx, db):
    db.execute("CREATE TABLE chatty (id INTEGER PRIMARY KEY)")
    for i in range({lines}):
        ctx.log(f"host {{i}}")


def down(ctx, db):
    db.execute("DROP TABLE chatty")
'''


def long_run_box(app: Appliance, *, keyed: bool = False) -> Appliance:
    """One migration applied; the next, pending, journals RECORD_AFTER + 10 log events."""
    if keyed:
        with_device_key(app)
    create_table_migration(app, "202401010001", "hosts")
    app.migrate()
    app.write("202401010002_chatty.py", CHATTY.format(lines=RECORD_AFTER + 10))
    return app


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_a_run_that_appended_a_walks_worth_records_the_point_at_its_end(
    appliance: Appliance, keyed: bool
) -> None:
    """The next writer walks only what came after the run, not the run's own events."""
    long_run_box(appliance, keyed=keyed)
    before = point(appliance)

    appliance.migrate()

    assert before is None  # the first run's walk was short: no point yet
    assert point(appliance) == snapshot_seq(appliance) == head(appliance)
    with reads() as after:
        assert commands.migrate(appliance.workspace()).outcome == "nothing_to_do"
    assert after["events"] <= 5  # the point's and the snapshot's own rows
    assert appliance.cli("journal", "verify").returncode == 0


def test_a_short_run_records_no_point_at_its_end(appliance: Appliance) -> None:
    """A run of a few events adds no durable commit for the point (as a short walk)."""
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    create_table_migration(appliance, "202401010002", "leases")

    appliance.migrate()

    assert point(appliance) is None


def test_an_event_another_writer_appended_mid_run_keeps_the_point_where_a_walk_reached(
    appliance: Appliance,
) -> None:
    """The end carries over this run's own appends only: a foreign row in between stops it."""
    long_run_box(appliance)
    ws = appliance.workspace()
    with ws.write_journal() as journal:
        start = journal.verify()
        journal.append([Entry("ValidationPerformed", b"\x80")])
        assert journal.walked_end() == ChainEnd(start.seq + 1, journal.head()[1], None)
        other = ws.write_journal()
        other.append([Entry("ValidationPerformed", b"\x80")])
        other.close()
        journal.append([Entry("ValidationPerformed", b"\x80")])
        assert journal.walked_end() is None


@pytest.mark.parametrize("crash_at", ["before-run-verified-point", "after-run-verified-point"])
def test_a_kill_around_the_runs_point_leaves_a_box_that_boots(
    appliance: Appliance, tmp_path: Path, crash_at: str
) -> None:
    """The point at a run's end is a derived cache too: a kill before or after costs a walk."""
    long_run_box(appliance)
    reached = tmp_path / "points.txt"

    killed = appliance.cli(
        "migrate", env={"FLYWALL_CRASH_AT": crash_at, "FLYWALL_CRASH_LIST": str(reached)}
    )

    assert killed.returncode == -9, killed.stderr
    assert f"{crash_at} 1\n" in reached.read_text()
    recorded = crash_at == "after-run-verified-point"
    assert point(appliance) == (head(appliance) if recorded else None)
    again = appliance.cli("migrate")
    assert (again.returncode, again.stdout, again.stderr) == (0, "nothing to do\n", "")
    assert point(appliance) == head(appliance)
    assert appliance.cli("journal", "verify").returncode == 0
