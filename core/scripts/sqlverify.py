"""A SQL migration's `-- migrate:verify` section is an assertion (DESIGN §4).

Each query in it (a statement that returns columns: SELECT, WITH, VALUES) must return at
least one row, and every row's first value must be true: not NULL, not 0, not an empty
string or blob. Anything else fails the check, naming the statement and the row, so a
verify can state a property of the data (`SELECT count(*) = 0 FROM leases WHERE ip IS
NULL`) and not only fail on an SQL error. Statements that return nothing (a `CREATE TEMP
TABLE` to help a later query) just run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import apsw

_SHOWN = 80
"""Characters of a statement or value quoted in a failure."""


class VerifyFailed(Exception):
    """A verify query returned no row, or a row whose first value is not true."""


def check(db: apsw.Connection, sql: str) -> None:
    """Run every statement of `sql`; each query must hold (see the module docstring).

    SQLite itself splits the text and says which statements return columns: each is
    prepared only once the ones before it ran (a query may read a temp table they made).

    :raises VerifyFailed: naming the statement, and the row whose first value is false.
    """
    import apsw.ext

    remaining: str | None = sql
    while remaining and remaining.strip():
        info = apsw.ext.query_info(db, remaining)
        statement, remaining = info.first_query, info.query_remaining
        rows = db.execute(statement).fetchall()
        if not info.description:  # no columns: a statement that is no query
            continue
        if not rows:
            raise VerifyFailed(f"`{_short(statement)}` returned no row")
        for number, row in enumerate(rows, 1):
            if not _true(row[0]):
                raise VerifyFailed(
                    f"`{_short(statement)}`: row {number} has {_short(repr(row[0]))} "
                    "as its first value, not true"
                )


def _true(value: object) -> bool:
    """SQLite's truth, as WHERE sees it, for the values a query returns."""
    if isinstance(value, str):
        try:
            return float(value) != 0
        except ValueError:
            return value != ""
    return bool(value)


def _short(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= _SHOWN else one_line[: _SHOWN - 1] + "…"
