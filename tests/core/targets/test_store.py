"""Flywall's store: Go time text, the change log's hash, the chain checker, the bucket helper.

Real state.db files in tmp_path, built by tests/flywallstore.py (its own writer of the
formula); the helper runs inside a write transaction as the engine's does.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

import apsw
import pytest
from flywallstore import (
    START_NS,
    create_store,
    entries,
    go_text,
    independent_chain_problem,
    log,
    replay,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torture import examples

from flywall.core.targets.records import CHECKPOINTS, Records
from flywall.core.targets.store import (
    DELETE,
    change_hash,
    check_chain,
    go_time,
    has_hash,
    is_store,
    parse_go_time,
)

if TYPE_CHECKING:
    from pathlib import Path


class Kill(Exception):
    """Raised at a batch boundary: as a process killed right after a batch committed."""


class Run:
    """A Records helper on `db` in the engine's transaction; optionally killed at batch n."""

    def __init__(self, db: apsw.Connection, step: str = "000000000002:up", kill_at: int = 0):
        self.batches: list[tuple[str, int, int]] = []
        self.kill_at = kill_at

        def on_batch(key: str, rows: int, total: int) -> None:
            self.batches.append((key, rows, total))
            if len(self.batches) == self.kill_at:
                raise Kill

        self.records = Records(db, step, on_batch=on_batch, progress=lambda *_: None)

    def __call__(self, bucket: str, method: str, *args: Any, **kwargs: Any) -> int:
        db = self.records.db
        db.execute("BEGIN IMMEDIATE")
        try:
            changed = getattr(self.records.bucket(bucket), method)(*args, **kwargs)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return changed


def finish(db: apsw.Connection, step: str) -> None:
    """What the engine does with the marker: the finished step's checkpoints go."""
    db.execute(f"DELETE FROM {CHECKPOINTS} WHERE step = ?", (step,))


def store(tmp_path: Path, leases: int = 60, *, hashed: bool = True) -> apsw.Connection:
    path = tmp_path / "state.db"
    create_store(path, leases, hashed=hashed)
    return apsw.Connection(str(path))


def fill_hostname(reserved: dict[str, Any]) -> Any:
    def fn(value: dict[str, Any]) -> dict[str, Any] | None:
        if value["hostname"] or value["mac"] not in reserved:
            return None
        return value | {"hostname": reserved[value["mac"]]}

    return fn


def reservations(db: apsw.Connection) -> dict[str, str]:
    return {
        k: json.loads(v)["hostname"]
        for k, v in db.execute("SELECT key, value FROM entries WHERE bucket = 'dhcp_reserved'")
    }


def assert_consistent(db: apsw.Connection) -> None:
    """The invariants of a store: chain intact; entries = replay of the log, versions too."""
    assert check_chain(db) is None
    if has_hash(db):
        assert independent_chain_problem(db) is None
    assert {k: (v, ver) for k, (v, ver, _) in entries(db).items()} == replay(db)


# --- Go time --------------------------------------------------------------------------


def test_go_time_is_gos_time_string_in_utc() -> None:
    assert go_time(START_NS) == "2026-02-15 10:04:05.123456789 +0000 UTC"
    assert go_time(1_771_149_845_000_000_000) == "2026-02-15 10:04:05 +0000 UTC"
    assert go_time(1_771_149_845_120_000_000) == "2026-02-15 10:04:05.12 +0000 UTC"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-02-15 10:04:05.123456789 +0000 UTC", START_NS),
        ("2026-02-15 11:04:05.123456789 +0100 CET", START_NS),
        ("2026-02-15 05:34:05.123456789 -0430 -0430", START_NS),
        ("2026-02-15 10:04:05.123456789 +0000 UTC m=+0.000123", START_NS),
        ("2026-02-15 10:04:05.5 +0000 UTC", 1_771_149_845_500_000_000),
        ("2026-02-15 10:04:05 +0000 UTC", 1_771_149_845_000_000_000),
    ],
)
def test_parse_go_time_reads_any_zone(text: str, ns: int) -> None:
    assert parse_go_time(text) == ns


@pytest.mark.parametrize(
    "text", ["2026-02-15T10:04:05Z", "2026-02-15 10:04:05.1234567891 +0000 UTC", "", "yesterday"]
)
def test_parse_go_time_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Go time"):
        parse_go_time(text)


@given(st.integers(0, 2**62))
def test_go_time_round_trips_and_matches_the_fixtures_own_formatter(ns: int) -> None:
    assert go_time(ns) == go_text(ns)
    assert parse_go_time(go_time(ns)) == ns


# --- the hash and the checker ---------------------------------------------------------


def test_change_hash_is_sha256_of_the_documented_bytes() -> None:
    raw = b'abc|dhcp_leases|02:42:00:00:01:07|{"ip":"10.0.0.1"}|update|42|' + str(START_NS).encode()
    assert (
        change_hash(
            "abc", "dhcp_leases", "02:42:00:00:01:07", b'{"ip":"10.0.0.1"}', "update", 42, START_NS
        )
        == hashlib.sha256(raw).hexdigest()
    )
    delete = hashlib.sha256(b"|b|k||delete|7|1").hexdigest()
    assert change_hash("", "b", "k", None, "delete", 7, 1) == delete


@pytest.mark.parametrize("hashed", [True, False])
def test_a_fixture_store_is_a_store_and_its_chain_holds(tmp_path: Path, *, hashed: bool) -> None:
    db = store(tmp_path, hashed=hashed)
    assert is_store(db)
    assert has_hash(db) is hashed
    assert_consistent(db)
    kinds = {k for (k,) in db.execute("SELECT DISTINCT change_type FROM changes")}
    assert kinds == {"insert", "update", "delete"}


def test_a_plain_database_is_not_a_store(tmp_path: Path) -> None:
    db = apsw.Connection(str(tmp_path / "x.db"))
    db.execute("CREATE TABLE entries (x); CREATE TABLE changes (y)")
    assert not is_store(db)


@pytest.mark.parametrize(
    ("tamper", "found"),
    [
        ("UPDATE changes SET value = CAST('{}' AS BLOB) WHERE id = 17", "changes row 17 .*: hash"),
        ("UPDATE changes SET key = 'x' WHERE id = 30", "changes row 30 \\(dhcp_leases/x\\): hash"),
        ("UPDATE changes SET hash = upper(hash) WHERE id = 1", "changes row 1 .*: hash"),
        ("UPDATE changes SET version = 3 WHERE id = 9", "changes row 9 .*: version 3 does not"),
        ("UPDATE changes SET change_type = 'put' WHERE id = 4", "row 4 .*: change_type 'put'"),
        ("UPDATE changes SET timestamp = '2026-02-15' WHERE id = 5", "row 5 .*: timestamp"),
        (
            "UPDATE changes SET timestamp = '2026-02-15 10:04:05.1 +0000 UTC' WHERE id = 6",
            "changes row 6 .*: hash",
        ),
        ("DELETE FROM changes WHERE id = 12", "changes row 13 .*: hash"),
        ("UPDATE changes SET hash = NULL WHERE id = 20", "row 21 .*: hashed after row 20"),
    ],
)
def test_the_checker_names_the_first_bad_row(tmp_path: Path, tamper: str, found: str) -> None:
    db = store(tmp_path)
    db.execute(tamper)
    problem = check_chain(db)
    assert problem is not None
    assert re.search(found, problem), problem


def test_a_purged_head_anchors_the_chain_and_an_unhashed_tail_waits_for_v03(
    tmp_path: Path,
) -> None:
    db = store(tmp_path)
    db.execute("DELETE FROM changes WHERE id < 40")  # the daemon's 24-hour purge
    assert check_chain(db) is None
    db.execute("UPDATE changes SET hash = NULL WHERE id > (SELECT max(id) - 3 FROM changes)")
    assert check_chain(db) is None
    db.execute("UPDATE changes SET value = NULL WHERE id = 45")
    assert "changes row 45" in (check_chain(db) or "")


# --- the bucket helper ----------------------------------------------------------------


def test_transform_gives_each_changed_entry_the_next_version_and_a_chained_change(
    tmp_path: Path,
) -> None:
    db = store(tmp_path)
    before = entries(db)
    old_log = db.execute("SELECT * FROM changes ORDER BY id").fetchall()
    (top,) = db.execute("SELECT max(version) FROM changes").fetchone()
    reserved = reservations(db)

    changed = Run(db)("dhcp_leases", "transform", fill_hostname(reserved))

    after = entries(db)
    moved = sorted(k for k in after if after[k] != before[k])
    assert changed == len(moved) > 0
    assert all(k[0] == "dhcp_leases" and after[k][0]["hostname"] == reserved[k[1]] for k in moved)
    assert sorted(after[k][1] for k in moved) == list(range(top + 1, top + 1 + changed))
    assert [after[k][1] for k in moved] == sorted(after[k][1] for k in moved)  # key order
    assert all(after[k][2] == before[k][2] for k in after)  # expires_at kept
    new_log = db.execute("SELECT * FROM changes ORDER BY id").fetchall()
    assert new_log[: len(old_log)] == old_log  # the log only grows
    appended = new_log[len(old_log) :]
    assert [(r[1], r[2], r[4], r[5]) for r in appended] == [
        ("dhcp_leases", k[1], "update", after[k][1]) for k in moved
    ]
    stamps = db.execute(
        "SELECT DISTINCT updated_at FROM entries WHERE version > ?", (top,)
    ).fetchall()
    assert len(stamps) == 1
    assert abs(parse_go_time(stamps[0][0]) - time.time_ns()) < 60 * 10**9
    assert {r[6] for r in appended} == {stamps[0][0]}
    assert all(isinstance(r[3], bytes) for r in appended)
    assert_consistent(db)
    assert Run(db)("dhcp_leases", "transform", fill_hostname(reserved)) == 0  # done already


def test_none_and_an_unchanged_value_leave_the_entry_alone(tmp_path: Path) -> None:
    db = store(tmp_path, 20)
    before = entries(db)
    rows = db.execute("SELECT count(*) FROM changes").fetchone()

    assert Run(db)("dhcp_leases", "transform", lambda _: None) == 0
    assert Run(db)("dhcp_leases", "transform", lambda v: v) == 0  # same bytes: no change

    assert entries(db) == before
    assert db.execute("SELECT count(*) FROM changes").fetchone() == rows


def test_delete_removes_the_entry_and_logs_a_delete_without_value(tmp_path: Path) -> None:
    db = store(tmp_path, 30)
    guests = {
        k for (b, k), (v, _, _) in entries(db).items() if b == "dhcp_leases" and v["interface"] == "guest0"
    }  # fmt: skip

    changed = Run(db)(
        "dhcp_leases", "transform", lambda v: DELETE if v["interface"] == "guest0" else None
    )

    assert changed == len(guests) > 0
    assert not {k for b, k in entries(db) if b == "dhcp_leases"} & guests
    tail = db.execute(
        "SELECT key, value, change_type FROM changes ORDER BY id DESC LIMIT ?", (changed,)
    ).fetchall()
    assert sorted(tail) == sorted((k, None, "delete") for k in guests)
    assert Records.DELETE is DELETE
    assert_consistent(db)


def test_where_picks_the_entries_fn_sees(tmp_path: Path) -> None:
    db = store(tmp_path, 30)
    seen: list[str] = []

    Run(db)(
        "dhcp_leases",
        "transform",
        lambda v: seen.append(v["mac"]),
        where="value ->> '$.interface' = 'guest0'",
        batch_size=4,
    )

    guests = sorted(
        k for (b, k), (v, _, _) in entries(db).items() if v.get("interface") == "guest0"
    )
    assert seen == guests


def test_transform_sql_makes_the_same_entries_and_log_as_the_python_form(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "s").mkdir()
    python, sql = store(tmp_path / "p", 50), store(tmp_path / "s", 50)
    Run(python)("dhcp_leases", "transform", lambda v: v | {"interface": "lan1"} if v["interface"] == "lan0" else None, batch_size=7)  # fmt: skip

    run = Run(sql)
    written = run(
        "dhcp_leases",
        "transform_sql",
        "json_set(value, '$.interface', 'lan1')",
        where="value ->> '$.interface' = 'lan0'",
        batch_size=7,
    )

    assert written > 0
    assert entries(sql).keys() == entries(python).keys()
    assert {k: v[:2] for k, v in entries(sql).items()} == {
        k: v[:2] for k, v in entries(python).items()
    }
    assert log(sql) == log(python)
    assert_consistent(sql)
    assert Run(sql)("dhcp_leases", "transform_sql", "json_set(value, '$.interface', 'lan1')") == 0


def test_a_v02_store_gets_its_changes_without_hash(tmp_path: Path) -> None:
    db = store(tmp_path, 30, hashed=False)
    changed = Run(db)("dhcp_leases", "transform", fill_hostname(reservations(db)), batch_size=5)
    assert changed > 0
    assert not has_hash(db)
    assert_consistent(db)


def test_an_unhashed_tail_stays_unhashed_for_v03_to_fill(tmp_path: Path) -> None:
    db = store(tmp_path, 30)
    db.execute("UPDATE changes SET hash = NULL WHERE id = (SELECT max(id) FROM changes)")
    changed = Run(db)("dhcp_leases", "transform", fill_hostname(reservations(db)))
    assert changed > 0
    assert db.execute("SELECT count(*) FROM changes WHERE hash IS NULL").fetchone() == (
        changed + 1,
    )
    assert check_chain(db) is None


def test_batches_commit_with_their_checkpoint_and_a_kill_resumes_to_the_same_store(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole, cut = store(tmp_path / "a", 90), store(tmp_path / "b", 90)
    fn = fill_hostname(reservations(whole))
    full = Run(whole)
    full("dhcp_leases", "transform", fn, batch_size=10)
    assert len(full.batches) == 9  # 90 leases, every 11th deleted: 82 entries

    killed = Run(cut, kill_at=3)
    with pytest.raises(Kill):
        killed("dhcp_leases", "transform", fn, batch_size=10)
    (key, rows) = cut.execute(f"SELECT last_key, rows FROM {CHECKPOINTS}").fetchone()
    assert (key, rows) == killed.batches[-1][:2]
    Run(cut)("dhcp_leases", "transform", fn, batch_size=10)

    assert entries(cut).keys() == entries(whole).keys()
    assert {k: v[:2] for k, v in entries(cut).items()} == {
        k: v[:2] for k, v in entries(whole).items()
    }
    assert log(cut) == log(whole)
    assert_consistent(cut)


def test_a_rollback_appends_its_own_changes(tmp_path: Path) -> None:
    db = store(tmp_path, 40)
    original = {k: v[0] for k, v in entries(db).items()}
    up = Run(db)("dhcp_leases", "transform", lambda v: v | {"zone": "lan"}, batch_size=6)
    finish(db, "000000000002:up")
    mid = len(log(db))

    down = Run(db, "000000000002:down")(
        "dhcp_leases", "transform", lambda v: {k: x for k, x in v.items() if k != "zone"}, batch_size=6
    )  # fmt: skip

    assert up == down > 0
    assert {k: v[0] for k, v in entries(db).items()} == original
    assert len(log(db)) == mid + down
    assert_consistent(db)


# --- the property ---------------------------------------------------------------------

Op = tuple[str, str, int, int | None, int, int]
"""(kind, bucket, argument, batch size, kill after batch n (0: none), fail at fn call n)."""

OPS = st.tuples(
    st.sampled_from(["tag", "tag_sql", "untag", "delete"]),
    st.sampled_from(["dhcp_leases", "dns_cache"]),
    st.integers(1, 4),
    st.one_of(st.none(), st.integers(1, 9)),
    st.integers(0, 4),
    st.integers(0, 25),
)


class Boom(Exception):
    """A vendor's fn failing mid-batch: that batch is undone, the earlier ones stay."""


def model_step(kind: str, arg: int, key: str, value: Any) -> Any:
    """What op `kind` makes of one entry's value: the expected store, entry by entry."""
    if kind in {"tag", "tag_sql"}:
        return value | {"tag": arg}
    if kind == "untag":
        return {k: v for k, v in value.items() if k != "tag"}
    return DELETE if sum(key.encode()) % (arg + 1) == 0 else value


def apply_op(db: apsw.Connection, step: str, op: Op) -> None:
    """Run op to its end, as the engine would after any number of kills and failures."""
    kind, bucket, arg, batch, kill, fail = op
    calls = [0]

    def fn(value: Any) -> Any:
        calls[0] += 1
        if calls[0] == fail:
            raise Boom
        return model_step(kind, arg, value.get("mac") or f"{value['name']}:{value['type']}", value)

    def delete(value: Any) -> Any:
        new = fn(value)
        return new if new is DELETE else None

    # killed or failed (once each at most), then resumed to the end
    attempts = [Run(db, step, kill_at=kill), Run(db, step), Run(db, step)]
    for run in attempts:
        try:
            if kind == "tag_sql":
                run(bucket, "transform_sql", f"json_set(value, '$.tag', {arg})", batch_size=batch)
            else:
                run(bucket, "transform", delete if kind == "delete" else fn, batch_size=batch)
        except (Kill, Boom):
            continue
        break
    else:
        pytest.fail("the resumed run did not finish")
    finish(db, step)


@settings(max_examples=examples(20, 40), deadline=None)
@given(ops=st.lists(OPS, max_size=6), hashed=st.booleans())
def test_after_any_migrations_rollbacks_and_kills_the_store_is_its_log(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Op], *, hashed: bool
) -> None:
    """The chain holds, each entry's version is its latest change's, and replaying the
    log from an empty store gives the entries, whatever ran, failed or was cut."""
    path = tmp_path_factory.mktemp("store") / "state.db"
    create_store(path, 30, hashed=hashed, dns=12)
    db = apsw.Connection(str(path))
    expected = {k: v for k, (v, _, _) in entries(db).items()}
    for i, op in enumerate(ops):
        kind, bucket, arg = op[:3]
        apply_op(db, f"{i:012d}:{'down' if kind == 'untag' else 'up'}", op)
        for (b, key), value in list(expected.items()):
            if b == bucket:
                new = model_step("tag" if kind == "tag_sql" else kind, arg, key, value)
                if new is DELETE:
                    del expected[(b, key)]
                else:
                    expected[(b, key)] = new
        assert_consistent(db)
        assert {k: v for k, (v, _, _) in entries(db).items()} == expected
    db.close()


def test_the_full_strategy_changes_the_bucket_in_one_transaction(tmp_path: Path) -> None:
    """`full` (atomic): batch_size is ignored; nothing commits before the engine does."""
    db = store(tmp_path, 40)
    before = entries(db)
    batches: list[Any] = []
    records = Records(
        db,
        "000000000002:up",
        on_batch=lambda *a: batches.append(a),
        progress=lambda *_: None,
        atomic=True,
    )
    db.execute("BEGIN IMMEDIATE")
    changed = records.bucket("dhcp_leases").transform(lambda v: v | {"x": 1}, batch_size=3)
    assert changed > 3
    assert batches == []
    db.execute("ROLLBACK")
    assert entries(db) == before
