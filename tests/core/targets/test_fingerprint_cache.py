"""The database target's cached schema fingerprint always equals a fresh full read.

The target keeps the catalog's fingerprint between migrations and, after a migration
that only created objects, adds just the new `sqlite_master` rows (see
`DatabaseTarget._watching_schema`). These tests drive real migrations' bodies (any mix
of DDL, failures, savepoints and changes by another connection) through the target on a
real file, and compare with `schema_fingerprint` on a connection of its own.
"""

from __future__ import annotations

from contextlib import closing, suppress
from typing import TYPE_CHECKING

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torture import examples

from flywall.core.targets.database import DatabaseTarget, bookkeeping, schema_fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NAMES = ("a", "b", "c")


def _statements(name: str) -> list[str]:
    return [
        f"CREATE TABLE t_{name} (id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
        f"CREATE TABLE IF NOT EXISTS t_{name} (id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
        f"CREATE INDEX i_{name} ON t_{name} (v)",
        f"CREATE VIEW v_{name} AS SELECT id FROM t_{name}",
        f"CREATE TRIGGER g_{name} AFTER INSERT ON t_{name} BEGIN SELECT 1; END",
        f"CREATE TEMP TABLE x_{name} (id)",
        f"DROP TABLE temp.x_{name}",
        f"INSERT INTO t_{name} (v) VALUES ('row')",
        f"DELETE FROM t_{name}",
        f"UPDATE t_{name} SET v = v || '!'",
        f"DROP TABLE t_{name}",
        f"DROP INDEX i_{name}",
        f"DROP VIEW v_{name}",
        f"ALTER TABLE t_{name} ADD COLUMN w_{name} TEXT",
        f"ALTER TABLE t_{name} RENAME TO r_{name}",
        f"ALTER TABLE r_{name} RENAME TO t_{name}",
        "PRAGMA defer_foreign_keys = ON",
        "SAVEPOINT s",
        "ROLLBACK TO s",
        "RELEASE s",
    ]


statement = st.sampled_from(NAMES).flatmap(lambda n: st.sampled_from(_statements(n)))
step = st.tuples(
    st.lists(statement, min_size=0, max_size=5),
    st.booleans(),  # the body raises at its end: the transaction is undone
    st.lists(statement, min_size=0, max_size=2),  # another connection, between steps
)


def _fresh(path: Path) -> str:
    with closing(apsw.Connection(str(path))) as db:
        return schema_fingerprint(db, bookkeeping("schema_versions"))


def _run(target: DatabaseTarget, number: int, sql: list[str], *, fail: bool) -> None:
    def body(db: apsw.Connection) -> None:
        for text in sql:
            with suppress(apsw.SQLError, apsw.ConstraintError):
                db.execute(text)
        if fail:
            msg = "the migration fails after its statements"
            raise RuntimeError(msg)

    with suppress(RuntimeError, apsw.SQLError):
        _run_body(target, number, body)


def _run_body(target: DatabaseTarget, number: int, body: Callable[[apsw.Connection], None]) -> None:
    """Run `body` as migration `number` of the database component, in the target's window."""
    target.run(
        version=f"{number:012d}",
        component="database",
        direction="up",
        checksum="c",
        body=body,
        run_id="r",
        schema_version=None,
        previous=None,
    )


@settings(max_examples=examples(40, 80), deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=8))
def test_the_cached_fingerprint_always_equals_a_full_read(tmp_path_factory, steps):
    path = tmp_path_factory.mktemp("fp") / "state.db"
    target = DatabaseTarget(path, "schema_versions")
    try:
        assert target.fingerprint() == _fresh(path)
        for number, (sql, fail, elsewhere) in enumerate(steps, start=1):
            _run(target, number, sql, fail=fail)
            assert target.fingerprint() == _fresh(path)
            with closing(apsw.Connection(str(path))) as other:
                other.set_busy_timeout(5000)
                for text in elsewhere:
                    with suppress(apsw.SQLError, apsw.ConstraintError):
                        other.execute(text)
            assert target.fingerprint() == _fresh(path)
    finally:
        target.close()


@pytest.mark.parametrize(
    "sql",
    [
        ["CREATE TABLE t_a (id)"],
        ["CREATE TABLE t_a (id)", "CREATE INDEX i_a ON t_a (id)", "CREATE VIEW v_a AS SELECT 1"],
        ["DROP TABLE base"],
        ["ALTER TABLE base ADD COLUMN w"],
    ],
)
def test_a_fingerprint_after_a_migration_sees_its_change(tmp_path, sql):
    """Whichever way it is computed (appended rows, or a full read), the change shows."""
    path = tmp_path / "state.db"
    target = DatabaseTarget(path, "schema_versions")
    try:
        target.db.execute("CREATE TABLE base (id)")
        _run(target, 1, [], fail=False)  # creates our tables: the next run can watch
        before = target.fingerprint()
        _run(target, 2, sql, fail=False)
        after = target.fingerprint()
        assert after != before
        assert after == _fresh(path)
    finally:
        target.close()


def test_a_body_that_commits_midway_lets_no_other_change_through_unseen(tmp_path):
    """A batched state migration commits inside its body: another writer can get in.

    Here another connection drops a table between the body's COMMIT and its next BEGIN.
    Two guards see it: the authorizer (installing one expires every prepared statement,
    so even COMMIT is authorized again) and the commit hook; the test fails without both.
    """
    path = tmp_path / "state.db"
    target = DatabaseTarget(path, "schema_versions")
    try:
        target.db.execute("CREATE TABLE base (id); CREATE TABLE gone (id)")
        _run(target, 1, ["CREATE TABLE t_a (id)"], fail=False)  # prepares COMMIT and BEGIN

        def body(db: apsw.Connection) -> None:
            db.execute("COMMIT")
            with closing(apsw.Connection(str(path))) as other:
                other.execute("DROP TABLE gone")
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE t_b (id)")

        _run_body(target, 2, body)
        assert target.fingerprint() == _fresh(path)
    finally:
        target.close()


def test_a_body_that_installs_its_own_authorizer_cannot_hide_a_change(tmp_path):
    """The target's authorizer sees the body's statements; one the body replaces cannot."""
    path = tmp_path / "state.db"
    target = DatabaseTarget(path, "schema_versions")
    try:
        target.db.execute("CREATE TABLE base (id)")
        _run(target, 1, ["CREATE TABLE t_a (id)"], fail=False)  # our tables exist from here

        def body(db: apsw.Connection) -> None:
            db.execute("CREATE TABLE t_b (id)")
            db.authorizer = lambda *_: apsw.SQLITE_OK
            db.execute("DROP TABLE base")

        _run_body(target, 2, body)
        assert target.fingerprint() == _fresh(path)
    finally:
        target.close()
