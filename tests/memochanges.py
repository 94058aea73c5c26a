"""Changes to a box's inputs that a memo must notice: shared by the status and boot memo tests.

Each changes one thing a memo is keyed on (a migration file's bytes, state.db's schema, a
marker row) and nothing else, on the demo-like box of three `create_table_migration`s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw

if TYPE_CHECKING:
    from conftest import Appliance

FIRST = "202401010001_create_hosts.sql"


def edit_same_size(app: Appliance) -> None:
    """An applied migration edited to the same size (only the bytes and ctime tell)."""
    path = app.migrations_dir / FIRST
    path.write_text(path.read_text().replace("name TEXT", "nome TEXT"))


def outsider_table(app: Appliance) -> None:
    """state.db's schema changed outside migrations (drift)."""
    with apsw.Connection(str(app.state_db)) as db:
        db.execute("CREATE TABLE outsider (x)")


def marker_deleted(app: Appliance) -> None:
    """The first migration's marker row gone from state.db (none to delete without state.db)."""
    if not app.state_db.exists():
        return
    with apsw.Connection(str(app.state_db)) as db:
        db.execute("DELETE FROM flywall_migration_markers WHERE version = '202401010001'")
