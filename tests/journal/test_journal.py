"""The journal on its own: append-only storage, the hash chain, its schema, and event bodies."""

from __future__ import annotations

import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torture import examples

from flywall.core.model import events as ev
from flywall.journal import (
    GENESIS,
    Entry,
    Journal,
    JournalCorrupt,
    JournalTooNew,
    _schema,
    event_hash,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TEXT_COLUMNS = ("run_id", "migration", "kind")
BLOB_COLUMNS = ("body", "prev_hash", "hash")
INTEGER_COLUMNS = ("seq", "at_ns")

entries = st.builds(
    Entry,
    kind=st.text(min_size=1, max_size=20),
    body=st.binary(max_size=64),
    run_id=st.text(max_size=12),
    migration=st.text(max_size=12),
    at_ns=st.none() | st.integers(0, 2**63 - 1),
)
not_adopting = entries.filter(lambda e: e.kind != "DeviceKeyAdopted")
"""Entries of any kind but the key adoption, which a chain walked without the key refuses
(Hypothesis also draws the string literals of the code under test, so it finds that kind);
adoption has its own tests below."""
batches = st.lists(st.lists(not_adopting, max_size=5), max_size=6)


def rows_of(journal: Journal) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in journal.read()]


def assert_chain_holds(journal: Journal, appended: list[Entry], key: bytes | None = None) -> None:
    """Check seq, links, hashes and contents of every row against what was appended."""
    rows = list(journal.read())
    assert [row.seq for row in rows] == list(range(1, len(appended) + 1))
    prev = GENESIS
    for row, entry in zip(rows, appended, strict=True):
        assert (row.kind, row.body, row.run_id, row.migration) == (
            entry.kind,
            entry.body,
            entry.run_id,
            entry.migration,
        )
        if entry.at_ns is not None:
            assert row.at_ns == entry.at_ns
        assert row.prev_hash == prev
        assert row.hash == event_hash(
            prev, row.seq, row.at_ns, row.kind, row.run_id, row.migration, row.body, key
        )
        prev = row.hash
    assert journal.verify()[:2] == journal.head() == (len(rows), prev)


# -- append and read ----------------------------------------------------------------------


def test_appended_events_read_back_in_order_with_seq_from_one_and_linked_hashes(tmp_path):
    appended = [
        Entry("RunStarted", b"\x81\xa4type", run_id="r1"),
        Entry("MigrationStarted", b"body", run_id="r1", migration="202401010000", at_ns=7),
        Entry("RunFinished", b"", run_id="r1"),
    ]
    with Journal.open(tmp_path / "j.db") as journal:
        assert journal.head() == (0, GENESIS)
        assert journal.verify()[:2] == (0, GENESIS)
        stored = journal.append(appended[:1]) + journal.append(appended[1:])

        assert [tuple(s) for s in stored] == rows_of(journal)
        assert_chain_holds(journal, appended)
        assert [r.seq for r in journal.read(1, until=2)] == [2]
        assert [r.seq for r in journal.read(migration="202401010000")] == [2]


def test_verify_returns_the_head_and_reopening_the_file_gives_the_same_head(tmp_path):
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        journal.append([Entry("A", b"1"), Entry("B", b"2")])
        head = journal.verify()[:2]
        assert head == journal.head()
        assert head[0] == 2
    with Journal.open(path) as journal:
        assert journal.head() == journal.verify()[:2] == head
    reader = Journal.open_existing(path)
    assert reader is not None
    with reader:
        assert reader.head() == reader.verify()[:2] == head


def test_an_empty_append_writes_nothing(tmp_path):
    with Journal.open(tmp_path / "j.db") as journal:
        journal.append([Entry("A", b"1")])
        head = journal.head()
        assert journal.append([]) == []
        assert journal.head() == head


@settings(max_examples=40, deadline=None)
@given(batches=batches)
def test_any_appended_batches_verify_and_read_back_exactly_as_appended(batches):
    with tempfile.TemporaryDirectory() as tmp, Journal.open(Path(tmp) / "j.db") as journal:
        appended: list[Entry] = []
        for batch in batches:
            stored = journal.append(batch)
            assert [s.seq for s in stored] == list(
                range(len(appended) + 1, len(appended) + len(batch) + 1)
            )
            appended += batch
        assert_chain_holds(journal, appended)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(not_adopting, min_size=1, max_size=6), keyed=st.booleans())
def test_the_chain_walk_agrees_with_event_hash_whether_text_comes_as_str_or_bytes(events, keyed):
    """walk_chain reads stored bytes; it must hash exactly what event_hash does."""
    from flywall.journal import walk_chain

    def verify_chain(rows, key):
        seq, head, _ = walk_chain(rows, key, keyed=key is not None)
        return seq, head

    key = KEY if keyed else None
    prev, rows = GENESIS, []
    for seq, e in enumerate(events, start=1):
        at_ns = e.at_ns or seq
        digest = event_hash(prev, seq, at_ns, e.kind, e.run_id, e.migration, e.body, key)
        rows.append((seq, at_ns, e.run_id, e.migration, e.kind, e.body, prev, digest))
        prev = digest
    as_bytes = [
        (s, t, r.encode(), m.encode(), k.encode(), b, p, h) for s, t, r, m, k, b, p, h in rows
    ]
    assert verify_chain(rows, key) == verify_chain(as_bytes, key) == (len(rows), prev)
    with pytest.raises(JournalCorrupt):
        verify_chain(rows, OTHER_KEY if keyed else KEY)
    with pytest.raises(JournalCorrupt):
        verify_chain(as_bytes, OTHER_KEY if keyed else KEY)


# -- tampering ----------------------------------------------------------------------------


def _flip_integer(value: int, index: int, mask: int) -> int:
    raw = bytearray(value.to_bytes(8, "big", signed=True))
    raw[index % 8] ^= mask
    return int.from_bytes(raw, "big", signed=True)


def _tamper(path: Path, seq: int, column: str, index: int, mask: int) -> int:
    """Flip one byte of `column` in row `seq` behind the journal's back; return the new seq.

    The append-only triggers are dropped first, as someone editing the file would.
    """
    conn = apsw.Connection(str(path))
    try:
        conn.execute("DROP TRIGGER events_refuse_update")
        (value,) = conn.execute(
            f"SELECT CAST({column} AS BLOB) FROM events WHERE seq = ?"
            if column in TEXT_COLUMNS
            else f"SELECT {column} FROM events WHERE seq = ?",
            (seq,),
        ).fetchone()
        new_seq = seq
        if column in INTEGER_COLUMNS:
            flipped: object = _flip_integer(value, index, mask)
            if column == "seq":
                new_seq = flipped  # type: ignore[assignment]
            placeholder = "?"
        else:
            raw = bytearray(value)
            raw[index % len(raw)] ^= mask
            flipped = bytes(raw)
            # Text stays text, even when the flip leaves it invalid UTF-8.
            placeholder = "CAST(? AS TEXT)" if column in TEXT_COLUMNS else "?"
        conn.execute(f"UPDATE events SET {column} = {placeholder} WHERE seq = ?", (flipped, seq))
    finally:
        conn.close()
    return new_seq


@st.composite
def tampering(draw: st.DrawFn) -> tuple[list[Entry], int, str, int, int]:
    appended = draw(st.lists(entries, min_size=1, max_size=6))
    seq = draw(st.integers(1, len(appended)))
    entry = appended[seq - 1]
    candidates = [*INTEGER_COLUMNS, "prev_hash", "hash"]
    candidates += [c for c in TEXT_COLUMNS if getattr(entry, c)]
    candidates += ["body"] if entry.body else []
    column = draw(st.sampled_from(candidates))
    index = draw(st.integers(0, 255))
    mask = draw(st.integers(1, 255))
    return appended, seq, column, index, mask


@settings(
    max_examples=examples(50, 150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(case=tampering(), keyed=st.booleans())
def test_flipping_any_byte_of_any_stored_column_is_reported_at_that_rows_seq(case, keyed):
    """A flipped byte anywhere in row k makes verify raise JournalCorrupt naming seq k.

    Content columns (run_id, migration, kind, body, at_ns) no longer match the row's hash; a
    flipped hash no longer matches the row's content; a flipped prev_hash no longer links to
    row k-1: all three are caught at row k itself, before row k+1 is looked at. A flipped seq
    leaves a gap where k was, so k is named too; unless the new seq sorts before every other
    row (zero or negative), in which case the walk is already wrong at its first row, seq 1.
    """
    appended, seq, column, index, mask = case
    key = KEY if keyed else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.db"
        with Journal.open(path, key=key) as journal:
            journal.append(appended)
            if column == "seq":
                flipped = _flip_integer(seq, index, mask)
                assume(not 1 <= flipped <= len(appended))  # would collide with another row
        new_seq = _tamper(path, seq, column, index, mask)
        expected = 1 if new_seq < 1 else seq
        with Journal.open(path, key=key) as journal, pytest.raises(JournalCorrupt) as info:
            journal.verify()
        assert info.value.seq == expected, info.value


def test_a_tail_event_renumbered_to_zero_does_not_vanish_from_verify(tmp_path):
    """Every stored row is walked, including one whose seq was moved below 1."""
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        journal.append([Entry("A", b"1"), Entry("B", b"2")])
    conn = apsw.Connection(str(path))
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("UPDATE events SET seq = 0 WHERE seq = 2")
    conn.close()
    with Journal.open(path) as journal, pytest.raises(JournalCorrupt) as info:
        journal.verify()
    assert info.value.seq == 1


def test_a_tampered_time_that_no_event_could_have_is_reported_at_its_seq(tmp_path):
    """A negative at_ns cannot even be hashed; verify names the row instead of crashing."""
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        journal.append([Entry("A", b"1", at_ns=5), Entry("B", b"2", at_ns=6)])
    assert _tamper(path, 2, "at_ns", 0, 0x80) == 2
    with Journal.open(path) as journal, pytest.raises(JournalCorrupt) as info:
        journal.verify()
    assert info.value.seq == 2
    assert "out of range" in info.value.detail


def test_a_keyed_chain_verifies_only_with_the_same_key(tmp_path):
    path = tmp_path / "j.db"
    with Journal.open(path, key=KEY) as journal:
        journal.append([Entry("A", b"1", "r", "m"), Entry("B", b"2")])
        assert_chain_holds(journal, [Entry("A", b"1", "r", "m"), Entry("B", b"2")], KEY)
        head = journal.verify()
    with Journal.open(path, key=KEY) as journal:
        assert journal.verify() == head
    for key in (None, OTHER_KEY):
        with Journal.open(path, key=key) as journal, pytest.raises(JournalCorrupt) as info:
            journal.verify()
        assert info.value.seq == 1


def test_the_keyed_and_unkeyed_hashes_of_the_same_event_differ():
    args = (GENESIS, 1, 2, "A", "r", "m", b"body")
    assert event_hash(*args) != event_hash(*args, KEY) != event_hash(*args, OTHER_KEY)
    assert event_hash(*args) == event_hash(*args, None)


# -- the database refuses what the store never does ------------------------------------


def _insert(journal: Journal, seq: int, prev_hash: bytes) -> None:
    journal.connection.execute(
        "INSERT INTO events (seq, at_ns, run_id, migration, kind, body, prev_hash, hash) "
        "VALUES (?, 0, '', '', 'X', x'', ?, ?)",
        (seq, prev_hash, bytes(32)),
    )


def test_the_chain_trigger_refuses_an_insert_that_does_not_extend_the_head(tmp_path):
    with Journal.open(tmp_path / "j.db") as journal:
        with pytest.raises(apsw.ConstraintError, match="must extend the head"):
            _insert(journal, 2, GENESIS)
        with pytest.raises(apsw.ConstraintError, match="must extend the head"):
            _insert(journal, 1, b"\x01" * 32)
        [row] = journal.append([Entry("A", b"1")])
        for seq, prev in ((1, GENESIS), (3, row.hash), (2, GENESIS), (2, row.hash[::-1])):
            with pytest.raises(apsw.ConstraintError, match="must extend the head"):
                _insert(journal, seq, prev)
        _insert(journal, 2, row.hash)  # the trigger checks the link, not the hash itself
        assert journal.head() == (2, bytes(32))


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("UPDATE events SET kind = 'B'", "UPDATE of events refused"),
        ("UPDATE events SET body = x'00' WHERE seq = 1", "UPDATE of events refused"),
        ("DELETE FROM events WHERE seq = 1", "DELETE of events refused"),
        ("DELETE FROM events", "DELETE of events refused"),
        ("UPDATE sources SET body = x'00'", "UPDATE of sources refused"),
        ("DELETE FROM sources", "DELETE of sources refused"),
    ],
)
def test_update_and_delete_are_refused_on_events_and_sources(tmp_path, statement, message):
    with Journal.open(tmp_path / "j.db") as journal:
        journal.append([Entry("A", b"1")], sources=[("d1", b"source")])
        before = rows_of(journal)
        with pytest.raises(apsw.ConstraintError, match=message):
            journal.connection.execute(statement)
        assert rows_of(journal) == before
        assert journal.source("d1") == b"source"


def test_sources_are_content_addressed_so_storing_a_digest_twice_is_a_no_op(tmp_path):
    with Journal.open(tmp_path / "j.db") as journal:
        journal.append([Entry("A", b"1")], sources=[("d1", b"one"), ("d2", b"two")])
        journal.append([Entry("B", b"2")], sources=[("d1", b"one")])
        journal.append([], sources=[("d1", b"one"), ("d2", b"two")])
        count = journal.connection.execute("SELECT count(*) FROM sources").fetchone()[0]
        assert count == 2
        assert (journal.source("d1"), journal.source("d2")) == (b"one", b"two")
        assert journal.source("missing") is None
        assert journal.verify()[0] == 2


# -- the journal's own schema -------------------------------------------------------------


def test_a_new_journal_file_is_at_the_current_schema_version_with_all_its_tables(tmp_path):
    with Journal.open(tmp_path / "j.db") as journal:
        conn = journal.connection
        assert _schema.version(conn) == _schema.CURRENT == len(_schema.STEPS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"events", "sources", "snapshots"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Journal.open(tmp_path / "j.db") as journal:  # reopening upgrades nothing
        assert _schema.version(journal.connection) == _schema.CURRENT


def test_a_journal_at_an_older_schema_version_is_upgraded_step_by_step_keeping_its_events(
    tmp_path,
):
    """A new file is created in one transaction; an older one still goes one step at a time."""
    path = tmp_path / "j.db"  # a journal as version 1 left it
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    _schema.STEPS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()
    with Journal.open(path) as journal:
        conn = journal.connection
        assert _schema.version(conn) == _schema.CURRENT
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"events", "sources", "snapshots", "meta"} <= tables
        journal.append([Entry("A", b"1")])
        assert journal.verify()[0] == 1


def _stamp_newer(path: Path) -> None:
    Journal.open(path).close()
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA user_version = {_schema.CURRENT + 1}")
    conn.close()


def test_a_journal_written_by_a_newer_program_is_refused_for_writing(tmp_path):
    path = tmp_path / "j.db"
    _stamp_newer(path)
    with pytest.raises(JournalTooNew, match=f"version {_schema.CURRENT + 1} is newer"):
        Journal.open(path)


def test_a_journal_written_by_a_newer_program_is_refused_for_reading(tmp_path):
    """A reader must not guess at a format it does not know, any more than a writer."""
    path = tmp_path / "j.db"
    _stamp_newer(path)
    with pytest.raises(JournalTooNew):
        Journal.open_existing(path)


def test_opening_a_missing_journal_for_reading_returns_none_and_creates_nothing(tmp_path):
    path = tmp_path / "sub" / "j.db"
    assert Journal.open_existing(path) is None
    assert Journal.open_existing(tmp_path / "j.db") is None
    assert list(tmp_path.iterdir()) == []


def test_opening_an_empty_file_for_reading_returns_none_and_leaves_it_empty(tmp_path):
    path = tmp_path / "j.db"
    path.touch()
    assert Journal.open_existing(path) is None
    assert path.read_bytes() == b""


# -- event bodies -------------------------------------------------------------------------

EVENT_TYPES = typing.get_args(ev.AnyEvent)
INT64 = st.integers(-(2**63), 2**63 - 1)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a field type, with ints kept to what msgpack stores (int64)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is int:
        return INT64
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = typing.get_type_hints(tp)
        fields = msgspec.structs.fields(tp)
        return st.fixed_dictionaries({f.name: strategy_for(hints[f.name]) for f in fields}).map(
            lambda kwargs: tp(**kwargs)
        )
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(a) for a in args])
    return st.from_type(tp)


def test_every_event_class_is_decodable_from_the_journal():
    """An Event subclass missing from AnyEvent could be written but never read back."""
    assert set(EVENT_TYPES) == set(ev.Event.__subclasses__())


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_event_round_trips_through_its_stored_bytes_and_its_kind_is_its_tag(event_type, data):
    event = data.draw(strategy_for(event_type))
    body = ev.encode(event)
    decoded = ev.decode(body)
    assert decoded == event
    assert type(decoded) is event_type
    assert ev.encode(decoded) == body  # stable bytes, so a stable hash
    assert ev.kind_of(event) == event_type.__struct_config__.tag == event_type.__name__
    assert msgspec.msgpack.decode(body)["type"] == ev.kind_of(event)


def rewrite_and_rechain(path: Path, seq: int) -> None:
    """Change row `seq`'s body and recompute every hash from it on, without any key."""
    conn = apsw.Connection(str(path))
    conn.execute("DROP TRIGGER events_refuse_update")
    rows = list(
        conn.execute(
            f"SELECT {', '.join(INTEGER_COLUMNS + TEXT_COLUMNS)}, body, prev_hash FROM events WHERE seq >= ? ORDER BY seq",
            (seq,),
        )
    )
    prev = rows[0][-1]
    for s, at_ns, run_id, migration, kind, body, _ in rows:
        body = body + b"!" if s == seq else body  # noqa: PLW2901
        digest = event_hash(prev, s, at_ns, kind, run_id, migration, body)
        conn.execute(
            "UPDATE events SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (body, prev, digest, s),
        )
        prev = digest
    conn.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plain=st.lists(not_adopting, min_size=1, max_size=5),
    keyed=st.lists(not_adopting, max_size=5),
    data=st.data(),
)
def test_a_chain_that_adopts_a_key_verifies_with_it_and_any_rewrite_is_caught(plain, keyed, data):
    """The adoption is the chain's first MAC: a row rewritten before it is caught there."""
    from flywall.journal import JournalError

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.db"
        with Journal.open(path) as journal:
            journal.append(plain)
        with Journal.open(path, key=KEY) as journal:
            with pytest.raises(JournalError, match="adopt the key first"):
                journal.append(keyed[:1] or plain[:1])
            adoption = journal.adopt_key(Entry("DeviceKeyAdopted", b"adopted"))
            journal.append(keyed)
            end = journal.verify()
            assert end.keyed_from == adoption.seq == len(plain) + 1
            assert end.seq == len(plain) + 1 + len(keyed)
            with pytest.raises(JournalError, match="keyed already, since seq"):
                journal.adopt_key(Entry("DeviceKeyAdopted", b"again"))
        with Journal.open(path) as journal:
            with pytest.raises(JournalCorrupt) as without_key:
                journal.verify()
            assert without_key.value.seq == adoption.seq
            with pytest.raises(JournalError, match="keyed; no device key"):
                journal.append(plain[:1])
        with Journal.open(path, key=OTHER_KEY) as journal, pytest.raises(JournalCorrupt) as other:
            journal.verify()
        assert other.value.seq == adoption.seq

        target = data.draw(st.integers(1, end.seq))
        rewrite_and_rechain(path, target)

        with Journal.open(path, key=KEY) as journal, pytest.raises(JournalCorrupt) as caught:
            journal.verify()
        assert caught.value.seq == max(target, adoption.seq)


def test_a_journal_file_that_is_not_a_database_is_corrupt_not_a_usage_error(tmp_path):
    from flywall.journal import JournalUnreadable

    path = tmp_path / "j.db"
    path.write_bytes(b"this is not a SQLite database at all, just text" * 100)

    for opener in (Journal.open, Journal.open_existing):
        with pytest.raises(JournalUnreadable, match=f"^{path}: journal is corrupt: ") as caught:
            opener(path)
        assert caught.value.exit_code == 4
    assert path.read_bytes().startswith(b"this is not a SQLite database")
