"""The record helper of state migrations: key ranges, batches, checkpoints, both transforms.

A real SQLite database in tmp_path; the helper runs inside a write transaction as the
engine's does (a batch commits and opens the next one itself).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import apsw
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywall.core.targets.records import CHECKPOINTS, Records

if TYPE_CHECKING:
    from pathlib import Path


class Run:
    """A Records helper on `db`, recording its batches and progress."""

    def __init__(self, db: apsw.Connection, step: str = "000000000002:up") -> None:
        self.batches: list[tuple[str, int, int]] = []
        self.progress: list[tuple[int, int]] = []
        self.records = Records(
            db,
            step,
            on_batch=lambda key, rows, total: self.batches.append((key, rows, total)),
            progress=lambda done, total: self.progress.append((done, total)),
        )

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> int:
        db = self.records.db
        db.execute("BEGIN IMMEDIATE")
        try:
            changed = getattr(self.records, method)(*args, **kwargs)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return changed


def leases(path: Path, n: int, *, gaps: int = 1) -> apsw.Connection:
    """`n` lease records (rowid 1, 1+gaps, ...), every third one without a hostname."""
    db = apsw.Connection(str(path))
    db.execute("CREATE TABLE leases (mac TEXT PRIMARY KEY, data TEXT)")
    db.executemany(
        "INSERT INTO leases (rowid, mac, data) VALUES (?, ?, ?)",
        [
            (1 + i * gaps, f"02:00:{i:08x}", json.dumps({"ip": f"10.0.0.{i}", "n": i}))
            for i in range(n)
        ],
    )
    return db


def datas(db: apsw.Connection, order: str = "rowid") -> list[Any]:
    return [
        None if d is None else json.loads(d)
        for (d,) in db.execute(f"SELECT data FROM leases ORDER BY {order}")
    ]


def to_v2(record: dict[str, Any]) -> dict[str, Any] | None:
    if "address" in record:
        return None
    return {"address": {"ipv4": record["ip"]}, "n": record["n"]}


def test_transform_changes_each_row_once_and_counts(tmp_path: Path) -> None:
    db = leases(tmp_path / "s.db", 25)
    run = Run(db)

    assert run("transform", "leases", to_v2) == 25

    assert datas(db) == [{"address": {"ipv4": f"10.0.0.{i}"}, "n": i} for i in range(25)]
    assert run("transform", "leases", to_v2) == 0  # already done: nothing to change
    assert db.execute("SELECT typeof(data) FROM leases GROUP BY 1").fetchall() == [("text",)]


@pytest.mark.parametrize("temp", ["", "TEMP "])
def test_rows_fn_leaves_alone_are_not_written(tmp_path: Path, temp: str) -> None:
    """None means untouched: an UPDATE trigger (a temp one too) fires only for rows changed."""
    db = leases(tmp_path / "s.db", 30)
    db.execute(
        "CREATE TABLE writes (mac TEXT);"
        f"CREATE {temp}TRIGGER w AFTER UPDATE ON main.leases "
        "BEGIN INSERT INTO writes VALUES (new.mac); END"
    )
    run = Run(db)

    changed = run("transform", "leases", lambda r: r | {"even": True} if r["n"] % 2 else None)

    assert changed == 15
    written = [mac for (mac,) in db.execute("SELECT mac FROM writes ORDER BY mac")]
    assert written == [f"02:00:{i:08x}" for i in range(1, 30, 2)]


def test_rows_fn_leaves_alone_keep_their_bytes_and_no_page_is_written(tmp_path: Path) -> None:
    """With nothing watching the table, a row fn leaves alone is given its own value back.

    Its record is then the very one SQLite has, and SQLite writes no page for it: another
    connection sees no commit at all (`PRAGMA data_version`). The records are stored as
    `json.dumps` writes them (`", "`), so a re-encoded value would show as a change.
    """
    path = tmp_path / "s.db"
    db = leases(path, 40)
    db.execute("PRAGMA journal_mode = WAL").fetchall()
    db.execute("INSERT INTO leases (rowid, mac, data) VALUES (100, 'blob', CAST('[1, 2]' AS BLOB))")
    before = db.execute("SELECT rowid, typeof(data), data FROM leases").fetchall()
    run = Run(db)
    assert run("transform", "leases", lambda _: None) == 0  # creates the checkpoint table
    other = apsw.Connection(str(path))
    version = other.execute("PRAGMA data_version").fetchone()

    assert run("transform", "leases", lambda _: None) == 0

    assert other.execute("PRAGMA data_version").fetchone() == version  # nothing committed
    assert db.execute("SELECT rowid, typeof(data), data FROM leases").fetchall() == before
    assert run("transform", "leases", lambda r: {"n": -1} if r == [1, 2] else None) == 1
    assert other.execute("PRAGMA data_version").fetchone() != version  # the check can fail
    assert db.execute("SELECT typeof(data), data FROM leases WHERE rowid = 100").fetchall() == [
        ("text", '{"n":-1}')
    ]
    other.close()


def test_under_a_statement_tracer_sqlite_counts_only_the_rows_fn_changed(tmp_path: Path) -> None:
    """`test --performance` charges a migration SQLite's total_changes() of its statements."""
    db = leases(tmp_path / "s.db", 30)
    statements: list[str] = []
    run = Run(db)
    run("transform", "leases", lambda _: None)  # the checkpoint table exists from here on

    def counts(tracer: Any) -> tuple[int, int]:
        db.exec_trace = tracer
        before = db.total_changes()
        changed = run("transform", "leases", lambda r: r | {"odd": 1} if r["n"] % 2 else None)
        db.exec_trace = None
        return changed, db.total_changes() - before

    assert counts(lambda _cursor, sql, _bindings: statements.append(sql) or True) == (15, 15)
    assert any(sql.startswith('UPDATE "leases"') for sql in statements)
    # untraced and unwatched, the rows fn leaves alone are given their own value back
    changed, total = counts(None)
    assert (changed, total) == (15, 30)


@pytest.mark.parametrize(
    ("schema", "watched"),
    [
        ("", False),
        ("CREATE TABLE other (id INTEGER PRIMARY KEY, mac TEXT REFERENCES leases (mac))", True),
        ("CREATE TABLE other (id INTEGER PRIMARY KEY, mac TEXT REFERENCES LEASES)", True),
        ("CREATE TABLE other (id INTEGER PRIMARY KEY, x REFERENCES somewhere_else)", False),
        ("CREATE TRIGGER t AFTER UPDATE ON leases BEGIN SELECT 1; END", True),
        ("CREATE TRIGGER t BEFORE DELETE ON Leases BEGIN SELECT 1; END", True),
        ("CREATE TEMP TRIGGER t AFTER UPDATE ON main.leases BEGIN SELECT 1; END", True),
        (
            "CREATE TABLE other (x); CREATE TRIGGER t AFTER UPDATE ON other BEGIN SELECT 1; END",
            False,
        ),
    ],
)
def test_a_trigger_or_a_foreign_key_takes_the_path_that_skips_unchanged_rows(
    tmp_path: Path, schema: str, *, watched: bool
) -> None:
    db = leases(tmp_path / "s.db", 3)
    db.execute(schema)
    assert Run(db).records._watched("leases") is watched
    child = apsw.Connection(str(tmp_path / "c.db"))
    child.execute("CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p REFERENCES p)")
    assert Run(child).records._watched("c") is True  # a child key too


def test_fn_sees_only_the_rows_where_selects_and_null_as_none(tmp_path: Path) -> None:
    db = leases(tmp_path / "s.db", 10)
    db.execute("UPDATE leases SET data = NULL WHERE rowid = 4")
    seen: list[Any] = []

    def fn(record: Any) -> Any:
        seen.append(record)
        return {"was": record}

    changed = Run(db)("transform", "leases", fn, where="rowid % 2 = 0", batch_size=2)

    assert changed == 5
    assert seen == [
        {"ip": "10.0.0.1", "n": 1},
        None,
        {"ip": "10.0.0.5", "n": 5},
        {"ip": "10.0.0.7", "n": 7},
        {"ip": "10.0.0.9", "n": 9},
    ]
    assert datas(db)[0] == {"ip": "10.0.0.0", "n": 0}  # not selected: unchanged


def test_batches_commit_with_their_checkpoint_and_report_progress(tmp_path: Path) -> None:
    db = leases(tmp_path / "s.db", 25, gaps=3)
    run = Run(db)
    committed: list[Any] = []
    run.records._on_batch = lambda key, rows, total: committed.append(
        (key, rows, total, db.in_transaction, checkpoint(tmp_path / "s.db"))
    )

    run("transform", "leases", to_v2, batch_size=10)

    # each batch is committed (seen from another connection) before it is journaled
    assert committed == [
        ("28", 10, 25, False, ("28", 10)),
        ("58", 20, 25, False, ("58", 20)),
        ("73", 25, 25, False, ("73", 25)),
    ]
    assert [done for done, _ in run.progress] == [10, 20, 25]


def checkpoint(path: Path) -> tuple[str, int] | None:
    other = apsw.Connection(str(path))
    try:
        row = other.execute(f"SELECT last_key, rows FROM {CHECKPOINTS}").fetchone()
    finally:
        other.close()
    return None if row is None else (str(row[0]), row[1])


def test_a_resumed_run_starts_after_the_last_checkpoint(tmp_path: Path) -> None:
    """As after a power cut in batch 3: batches 1-2 committed with their checkpoint."""
    db = leases(tmp_path / "s.db", 30)
    db.execute(
        f"CREATE TABLE {CHECKPOINTS} (step TEXT NOT NULL, tbl TEXT NOT NULL, last_key, "
        "rows INTEGER NOT NULL, PRIMARY KEY (step, tbl));"
        f"INSERT INTO {CHECKPOINTS} VALUES ('000000000002:up', 'leases', 20, 20)"
    )
    seen: list[int] = []
    run = Run(db)

    run("transform", "leases", lambda r: seen.append(r["n"]) or {"n": r["n"]}, batch_size=4)

    assert seen == list(range(20, 30))
    assert run.batches[-1] == ("30", 30, 30)
    assert datas(db)[:20] == [{"ip": f"10.0.0.{i}", "n": i} for i in range(20)]


def test_a_text_key_orders_the_walk(tmp_path: Path) -> None:
    db = leases(tmp_path / "s.db", 12)
    db.execute("UPDATE leases SET mac = 'zz' || mac WHERE rowid % 2 = 1")
    order: list[int] = []

    Run(db)("transform", "leases", lambda r: order.append(r["n"]) or r, key="mac", batch_size=5)

    assert order == [1, 3, 5, 7, 9, 11, 0, 2, 4, 6, 8, 10]


def test_a_vendor_exception_comes_through_and_undoes_the_batch(tmp_path: Path) -> None:
    class VendorBug(Exception):
        pass

    def fn(record: dict[str, Any]) -> dict[str, Any]:
        if record["n"] == 13:
            raise VendorBug("no ip")
        return {"n": -record["n"]}

    db = leases(tmp_path / "s.db", 20)
    run = Run(db)

    with pytest.raises(VendorBug, match="no ip"):
        run("transform", "leases", fn, batch_size=5)

    # batches 1 and 2 committed; the failing batch (10-14) left as it was
    assert [d["n"] for d in datas(db)] == [-i for i in range(10)] + list(range(10, 20))
    assert checkpoint(tmp_path / "s.db") == ("10", 10)


def test_transform_sql_reshapes_like_the_python_transform(tmp_path: Path) -> None:
    python, sql = leases(tmp_path / "p.db", 23), leases(tmp_path / "q.db", 23)
    Run(python)("transform", "leases", to_v2, batch_size=7)

    run = Run(sql)
    written = run(
        "transform_sql",
        "leases",
        "json_object('address', json_object('ipv4', data ->> '$.ip'), 'n', data -> '$.n')",
        where="json_type(data, '$.address') IS NULL",
        batch_size=7,
    )

    assert written == 23
    assert datas(sql) == datas(python)
    assert [key for key, _, _ in run.batches] == ["7", "14", "21", "23"]
    again = Run(sql)
    assert (
        again("transform_sql", "leases", "'x'", where="json_type(data, '$.address') IS NULL") == 0
    )


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(-50, 500), unique=True, max_size=60),
    batch=st.one_of(st.none(), st.integers(1, 12)),
    modulus=st.integers(1, 4),
    where=st.sampled_from([None, "rowid % 3 <> 0"]),
    sql=st.booleans(),
    trigger=st.booleans(),
)
def test_every_selected_row_is_visited_once_in_key_order(
    tmp_path_factory: pytest.TempPathFactory,
    keys: list[int],
    batch: int | None,
    modulus: int,
    where: str | None,
    *,
    sql: bool,
    trigger: bool,
) -> None:
    """Either way of changing rows (with an UPDATE trigger or without) visits the same rows."""
    db = apsw.Connection(str(tmp_path_factory.mktemp("p") / "s.db"))
    db.execute("CREATE TABLE leases (data TEXT); CREATE TABLE writes (k INTEGER)")
    if trigger:
        db.execute(
            "CREATE TRIGGER w AFTER UPDATE ON leases BEGIN INSERT INTO writes VALUES (new.rowid); END"
        )
    db.executemany(
        "INSERT INTO leases (rowid, data) VALUES (?, ?)", [(k, json.dumps(k)) for k in keys]
    )
    selected = sorted(k for k in keys if where is None or k % 3 != 0)
    run = Run(db)
    visited: list[int] = []

    def fn(value: int) -> int | None:
        visited.append(value)
        return value * 10 if value % modulus == 0 else None

    if sql:
        changed = run("transform_sql", "leases", "data * 10", where=where, batch_size=batch)
        expected = {k: k * 10 if k in selected else k for k in keys}
        assert changed == len(selected)
    else:
        changed = run("transform", "leases", fn, where=where, batch_size=batch)
        expected = {k: k * 10 if k in selected and k % modulus == 0 else k for k in keys}
        assert visited == selected
        assert changed == sum(1 for k in selected if k % modulus == 0)
        if trigger:  # written: exactly the rows fn changed, in key order
            written = [k for (k,) in db.execute("SELECT k FROM writes ORDER BY rowid")]
            assert written == [k for k in selected if k % modulus == 0]
    rows = dict(db.execute("SELECT rowid, data FROM leases").fetchall())
    assert {k: json.loads(v) for k, v in rows.items()} == expected
    # batches are rows of the table in key order, `where` picking among them
    if batch is not None:
        assert [done for _, done, _ in run.batches] == [
            min(len(keys), batch * (i + 1)) for i in range(len(run.batches))
        ]
        assert len(run.batches) == -(-len(keys) // batch)
    assert not run.progress or run.progress[-1] == (len(keys), len(keys))
    db.close()


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",))), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(_JSON, min_size=1, max_size=12))
def test_new_values_are_stored_byte_for_byte_as_the_old_str_path_wrote_them(
    tmp_path_factory: pytest.TempPathFactory, values: list[Any]
) -> None:
    """Flywall's own loader reads these records: the reused buffer changes no byte.

    The old one-call path stored `Encoder().encode(new).decode()`, a str; the new one
    hands SQLite the encoder's bytes and casts them to TEXT. Same key order, separators,
    non-ASCII, floats and integers; a short value after a long one leaves no tail behind.
    """
    db = apsw.Connection(str(tmp_path_factory.mktemp("b") / "s.db"))
    db.execute("CREATE TABLE leases (data TEXT)")
    db.executemany(
        "INSERT INTO leases (data) VALUES (?)", [(json.dumps(i),) for i in range(len(values))]
    )
    new = {i: {"v": v, "é": [i, '日本 ✓ \n"\\']} for i, v in enumerate(values)}

    changed = Run(db)("transform", "leases", lambda i: new[i] if i % 3 else {"v": "x" * 300})

    assert changed == len(values)
    old = msgspec.json.Encoder().encode
    stored = db.execute("SELECT typeof(data), CAST(data AS BLOB) FROM leases ORDER BY rowid")
    assert stored.fetchall() == [
        ("text", old(new[i] if i % 3 else {"v": "x" * 300}).decode().encode())
        for i in range(len(values))
    ]
    db.close()


@pytest.mark.parametrize(
    "watch", ["", "CREATE TRIGGER w AFTER UPDATE ON leases BEGIN SELECT 1; END"]
)
def test_a_utf16_database_gets_the_same_text(tmp_path: Path, watch: str) -> None:
    """`CAST(bytes AS TEXT)` reads the database's encoding: UTF-16 takes the str path.

    Both UPDATE forms: the one-call one (nothing watches) and the two-call one (a trigger).
    """
    db = apsw.Connection(str(tmp_path / "s.db"))
    db.execute("PRAGMA encoding = 'UTF-16le'")
    db.execute("CREATE TABLE leases (mac TEXT PRIMARY KEY, data TEXT)")
    db.execute(watch)
    db.executemany(
        "INSERT INTO leases (mac, data) VALUES (?, ?)",
        [(f"m{i}", json.dumps({"ip": f"10.0.0.{i}", "n": i})) for i in range(5)],
    )

    assert Run(db)("transform", "leases", to_v2) == 5

    assert datas(db) == [{"address": {"ipv4": f"10.0.0.{i}"}, "n": i} for i in range(5)]
    assert db.execute("SELECT typeof(data) FROM leases GROUP BY 1").fetchall() == [("text",)]
