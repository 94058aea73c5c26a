"""A throw-away copy of an appliance, for dry runs and `test` (DESIGN §7 "Dry run").

state.db and the journal are copied with SQLite's online backup API (consistent while
readers run, and the journal's copy replays to the same states, so the sandbox plans
exactly what the real appliance would); flywall.hcl and api.json are copied as bytes.
The sandbox's `Workspace` has the real settings with every path that is written moved
into a temporary folder; migrations are still discovered in the real directories.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Self

import apsw
import msgspec

from flywall.core.appliance.workspace import SqliteOptions, Workspace
from flywall.core.runtime import fileio
from flywall.core.targets.database import bookkeeping

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Sandbox", "copy_database", "open_database", "schema_lines", "text_lines"]


def copy_database(source: Path, target: Path) -> None:
    """Copy a live SQLite file with the online backup API (never a byte copy).

    The source is opened read-write but only read: a read-only connection to a WAL file
    would leave its `-wal` and `-shm` behind in the appliance's folder.
    """
    from flywall.core.model.errors import ValidationFailed

    try:
        src = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.CantOpenError as e:  # e.g. a directory in its place
        raise ValidationFailed(f"{source}: cannot open the database: {e}") from e
    try:
        src.set_busy_timeout(5000)
        try:  # the backup step would only say "not an error" of a file that is no database
            src.execute("PRAGMA schema_version").fetchall()
        except (apsw.NotADBError, apsw.CorruptError, apsw.CantOpenError) as e:
            raise ValidationFailed(f"{source}: cannot open the database: {e}") from e
        dest = apsw.Connection(str(target))
        try:
            with dest.backup("main", src, "main") as job:
                job.step(-1)
        finally:
            dest.close()
    finally:
        src.close()


class Sandbox:
    """A copy of the appliance in a temp folder; removed when the `with` block ends.

    :param workspace: the real appliance.
    :param fresh: start from an empty journal and a state.db holding Flywall's empty store,
        as the firmware creates it (``test --isolation``); flywall.hcl and api.json are
        still copied.
    :param sqlite: how the sandbox opens SQLite files (e.g. with an exec tracer).
    """

    def __init__(
        self, workspace: Workspace, *, fresh: bool = False, sqlite: SqliteOptions | None = None
    ) -> None:
        self.real = workspace
        self.fresh = fresh
        self._sqlite = sqlite or SqliteOptions()
        self.root: Path
        self.ws: Workspace

    def __enter__(self) -> Self:
        self.root = Path(tempfile.mkdtemp(prefix="flywall-sandbox-"))
        try:
            self.ws = self._build()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _build(self) -> Workspace:
        real = self.real.paths

        def place(kind: str, path: Path) -> Path:
            folder = self.root / kind
            folder.mkdir()
            return folder / path.name

        journal = place("journal", real.journal)
        paths = msgspec.structs.replace(
            real,
            config=place("config", real.config),
            api_document=place("api", real.api_document),
            state_db=place("state", real.state_db),
            journal=journal,
            lock=journal.with_name(journal.name + ".lock"),
            backups=self.root / "backups",
            run_dir=self.root / "run",
            ui_backups=self.root / "ui-backups",
        )
        for source, target in (
            (real.config, paths.config),
            (real.api_document, paths.api_document),
        ):
            content = fileio.read(source)
            if content is not None:
                target.write_bytes(content)
        if self.fresh:
            from flywall.core.targets.store import create_store

            create_store(paths.state_db)  # what a box's state.db is before any migration
        else:
            for source, target in ((real.state_db, paths.state_db), (real.journal, paths.journal)):
                if source.exists():
                    copy_database(source, target)
        # A copy needs no backup of its own, and an automatic rollback would hide the
        # failure a dry run or a test exists to show.
        settings = msgspec.structs.replace(
            self.real.settings, paths=paths, backup_before=False, auto_rollback=False
        )
        # The device key file is not moved: the copied chain verifies with the same key.
        return Workspace(settings, self._sqlite, sandbox=True)


def open_database(ws: Workspace) -> apsw.Connection | None:
    """Open the sandbox's state.db to inspect it; None when there is none."""
    if not ws.paths.state_db.exists():
        return None
    return apsw.Connection(str(ws.paths.state_db), flags=apsw.SQLITE_OPEN_READWRITE)


_SPACE = re.compile(r"\s+")


def schema_lines(ws: Workspace) -> list[str]:
    """Return state.db's schema as one normalised line per object, for a readable diff.

    The rule of `schema_fingerprint` (whitespace folded, our bookkeeping tables and
    SQLite's own objects left out), ordered by table with each table before its indexes.
    """
    db = open_database(ws)
    if db is None:
        return []
    exclude = bookkeeping(ws.settings.version_table)
    try:
        rows = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    objects = sorted(
        (table, kind != "table", name, _SPACE.sub(" ", str(sql)).strip().rstrip(";"))
        for kind, name, table, sql in rows
        if table not in exclude
    )
    return [f"{sql};\n" for *_, sql in objects]


def text_lines(content: bytes | None) -> list[str]:
    """Split a file's bytes into lines for difflib (every line ends in a newline)."""
    if content is None:
        return []
    lines = content.decode("utf-8", errors="replace").splitlines(keepends=True)
    return [line if line.endswith("\n") else line + "\n" for line in lines]
