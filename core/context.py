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

        Creates the new table under a temporary name from `create_sql` (which names
        `table`), copies `columns`, drops the old table, renames the new one, recreates
        the old table's indexes and triggers whose columns still exist, and checks foreign
        keys. Runs inside the engine's transaction, so a failure undoes all of it.

        :raises ValueError: `create_sql` does not create `table`.
        :raises apsw.ConstraintError: the rebuilt table breaks a foreign key.
        """
        if self.db is None:
            msg = "recreate_table is only available to database migrations"
            raise RuntimeError(msg)
        db = self.db
        pattern = rf'^\s*CREATE\s+TABLE\s+(?:"{re.escape(table)}"|{re.escape(table)})\b'
        temp = f"_flywall_new_{table}"
        new_sql, found = re.subn(
            pattern, f'CREATE TABLE "{temp}"', create_sql, count=1, flags=re.IGNORECASE
        )
        if not found:
            msg = f"create_sql must start with CREATE TABLE {table}"
            raise ValueError(msg)
        keep = db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL",
            (table,),
        ).fetchall()
        db.execute("PRAGMA defer_foreign_keys = ON")
        db.execute(new_sql)
        cols = ", ".join(f'"{c}"' for c in columns)
        db.execute(f'INSERT INTO "{temp}" ({cols}) SELECT {cols} FROM "{table}"')
        db.execute(f'DROP TABLE "{table}"')
        db.execute(f'ALTER TABLE "{temp}" RENAME TO "{table}"')
        remaining = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
        for (sql,) in keep:
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
