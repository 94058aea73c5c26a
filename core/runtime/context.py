"""What a migration's `up`, `down` and `verify` receive as `ctx` (DESIGN §4)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import apsw


class MigrationContext:
    """The engine's services for one migration run: journaled logs, progress, helpers."""

    def __init__(
        self,
        version: str,
        direction: str,
        settings: Any,
        log: Callable[[str, str], None],
        progress: Callable[[int, int], None],
        db: apsw.Connection | None = None,
    ) -> None:
        self.version = version
        self.direction = direction
        self.settings = settings
        self.db = db
        self._log = log
        self._progress = progress

    def log(self, message: str, level: str = "info") -> None:
        """Write a line to the migration's journaled log (`flywall migration log V`)."""
        self._log(str(message), level)

    def progress(self, done: int, total: int) -> None:
        """Report progress; shown as a progress bar on a terminal."""
        self._progress(done, total)

    def recreate_table(self, table: str, create_sql: str, columns: list[str]) -> None:
        """Change a table's shape the way SQLite documents (ALTER TABLE, "12 steps").

        Copies `columns` aside, drops the table, creates it again from `create_sql`
        exactly as written (so `sqlite_master` holds the vendor's text, not a rename's
        quoted one), copies the rows back, and recreates the old indexes and triggers
        whose columns still exist. Foreign keys are checked at commit (deferred). Runs
        inside the engine's transaction, so a failure undoes all of it.

        :raises ValueError: `create_sql` does not create `table`, or a foreign key breaks.
        """
        if self.db is None:
            msg = "recreate_table is only available to database migrations"
            raise RuntimeError(msg)
        db = self.db
        pattern = rf'^\s*CREATE\s+TABLE\s+(?:"{re.escape(table)}"|{re.escape(table)})\b'
        if not re.match(pattern, create_sql, flags=re.IGNORECASE):
            msg = f"create_sql must start with CREATE TABLE {table}"
            raise ValueError(msg)
        keep = db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL",
            (table,),
        ).fetchall()
        aside = f"_flywall_old_{table}"
        cols = ", ".join(f'"{c}"' for c in columns)
        db.execute("PRAGMA defer_foreign_keys = ON")
        db.execute(f'CREATE TEMP TABLE "{aside}" AS SELECT {cols} FROM "{table}"')
        db.execute(f'DROP TABLE "{table}"')
        db.execute(create_sql)
        db.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM temp."{aside}"')
        db.execute(f'DROP TABLE temp."{aside}"')
        remaining = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
        for (sql,) in keep:
            assert isinstance(sql, str)  # the query asks for `sql IS NOT NULL`
            if all(_mentions_only(sql, remaining, table)):
                db.execute(sql)
        problems = db.execute(f'PRAGMA foreign_key_check("{table}")').fetchall()
        if problems:
            msg = f"recreating {table} breaks {len(problems)} foreign key reference(s)"
            raise ValueError(msg)


def _mentions_only(sql: str, columns: set[str], table: str) -> list[bool]:
    """Tell, per `table(col, ...)` column list in an index's SQL, whether it survives."""
    match = re.search(r"\bON\s+\"?" + re.escape(table) + r"\"?\s*\(([^)]*)\)", sql, re.IGNORECASE)
    if match is None:
        return [True]
    names = [part.strip().strip('"').split()[0] for part in match.group(1).split(",")]
    return [name in columns for name in names]
