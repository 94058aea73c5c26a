"""One appliance as the commands see it: settings, files, journal and targets.

Everything that turns settings into open things (the journal, state.db, the migration
files) lives here, so commands stay short and every interface opens things the same way.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from flywall.core.appliance.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from flywall.core.appliance.settings import Settings
    from flywall.core.model.errors import DiscoveryError
    from flywall.core.scripts.discovery import Broken, Migration
    from flywall.journal import Journal


def _autocheckpoint_from_env() -> int | None:
    """The crash tests' checkpoint threshold for a subprocess; None (SQLite's) otherwise."""
    value = os.environ.get("FLYWALL_WAL_AUTOCHECKPOINT", "")
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


class SqliteOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How SQLite files are opened. The defaults are the product's; tests change them.

    `vfs` lets the power-cut simulation sit under every SQLite file; the `*_synchronous`
    overrides exist only for its negative controls (WAL + NORMAL must be caught losing
    acknowledged commits), never for production use. `wal_autocheckpoint` (pages; also
    `FLYWALL_WAL_AUTOCHECKPOINT` for the crash tests' subprocesses) lowers the journal's
    and state.db's automatic checkpoint threshold, so that checkpoints happen inside every
    run a crash test cuts (CRASH-TESTING.md, "Coverage beats count").
    """

    vfs: str | None = None
    journal_synchronous: str = "FULL"
    target_synchronous: str | None = None
    wal_autocheckpoint: int | None = msgspec.field(default_factory=_autocheckpoint_from_env)
    exec_trace: Callable[[Any, str, Any], bool] | None = None
    """APSW exec tracer set on state.db's connection (dry run prints the SQL it sees)."""


class Workspace:
    """The appliance under `root`, as described by its `migration { }` settings."""

    def __init__(
        self, settings: Settings, sqlite: SqliteOptions | None = None, *, sandbox: bool = False
    ) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.sqlite = sqlite or SqliteOptions()
        self.sandbox = sandbox
        """Copies made for a dry run or a test: no daemon, no appliance to protect."""
        self.lock_wait = 0.0
        """Seconds a writing command waits for the writer lock (`--wait`); 0: busy at once."""
        self._device_key: bytes | None = None

    @classmethod
    def load(cls, root: str | Path = "/", config: str | Path | None = None) -> Workspace:
        """Read the settings of the appliance under `root`."""
        return cls(load_settings(Path(root), Path(config) if config else None))

    def shown(self, path: Path) -> str:
        """Name a path as the operator knows it: relative to a demo root, else absolute."""
        root = self.settings.root
        if root != Path("/") and path.is_relative_to(root):
            return str(path.relative_to(root))
        return str(path)

    def config_problem(self) -> str | None:
        """Say why Flywall's config must not be migrated here; None if it may be.

        Neither layout has a config under the root (nothing would be found, and a run
        would invent an appliance), or flywall.hcl holds a `migration { }` block (Flywall
        refuses it, so a run would leave a box that boots its empty built-in config).
        """
        from flywall.core.appliance import layout

        if self.settings.layout == layout.NONE:
            return f"no Flywall config under {self.settings.root}"
        try:
            text = self.paths.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None  # reading it is the targets' job, with their own errors
        line = layout.migration_block_line(text)
        if line is None:
            return None
        return (
            f"{self.shown(self.paths.config)}:{line}: a migration {{ }} block in flywall.hcl "
            f"makes Flywall refuse its config: move the block into "
            f"{self.shown(self.paths.settings or self.paths.config)}"
        )

    def require_appliance(self) -> None:
        """Refuse a writing command where `config_problem` finds one, or flywall.hcl is not HCL.

        Both before anything is written: a run must not begin on a config it cannot read.

        :raises UsageError: naming the root, or the line of the block and where it goes.
        :raises ConfigParseError: naming flywall.hcl, the line and the column.
        """
        if self.sandbox:
            return
        problem = self.config_problem()
        if problem is not None:
            from flywall.core.model.errors import UsageError

            raise UsageError(problem)
        try:
            text = self.paths.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return  # reading it is the targets' job, with their own errors
        from flywall.core.appliance.settings import check_parses

        check_parses(text, self.shown(self.paths.config))

    def directories(self) -> list[Path]:
        """Return where migrations are looked for: the settings' directory, then shipped ones."""
        from flywall.core.scripts.discovery import shipped_directory

        dirs = [self.paths.migrations_dir]
        if self.settings.include_shipped:
            dirs.append(shipped_directory())
        return dirs

    tolerate_broken = False
    """Readers (status, list, validate) set this: `migrations` then skips broken files,
    which they show from `broken`; every other command refuses while one is there."""

    @property
    def migrations(self) -> list[Migration]:
        """Return every migration file found, sorted by version (read once per command).

        :raises BrokenMigration: a file in a migrations folder is not a valid migration
            (unless `tolerate_broken`): nothing may run on a box whose plan is unknown.
        """
        if "migrations_override" in self.__dict__:  # trial boxes narrow the set by hand
            return self.__dict__["migrations_override"]
        migrations, broken = self._scan
        if broken and not self.tolerate_broken:
            from flywall.core.model.errors import BrokenMigration

            raise BrokenMigration(broken[0][1])
        return migrations

    @migrations.setter
    def migrations(self, value: list[Migration]) -> None:
        self.__dict__["migrations_override"] = value
        self.__dict__.pop("_by_version", None)

    @property
    def broken(self) -> list[Broken]:
        """The files in the migrations folders that are not valid migrations, and why."""
        return [b for b, _ in self._scan[1]]

    @functools.cached_property
    def _scan(self) -> tuple[list[Migration], list[tuple[Broken, DiscoveryError]]]:
        """Every migration file found, and the broken ones (read once per command).

        Every command, writers included, trusts the discovery cache for files whose stat
        fields (ctime among them) are unchanged: see `discover` for why that is sound.
        The cache is authenticated with the device key; an unreadable key file means no
        cache here (the commands that need the key report that error themselves).
        """
        from flywall.core.model.errors import SettingsError
        from flywall.core.scripts.discovery import scan

        cache: Path | None = self.settings.root / "var/cache/flywall/migrations.msgpack"
        try:
            key = self.device_key()
        except SettingsError:
            cache = key = None
        if self.settings.layout == "none":  # no appliance here: leave no cache behind either
            cache = None
        return scan(self.directories(), cache, key=key)

    def migration(self, version: str) -> Migration | None:
        """Return the migration file with `version`, if one is on disk."""
        return self._by_version.get(version)

    @functools.cached_property
    def _by_version(self) -> dict[str, Migration]:
        return {m.version: m for m in self.migrations}

    def read_journal(self) -> Journal | None:
        """Open the journal for reading; None when nothing was ever journaled.

        Its errors arrive translated (`appliance/journalfile.py`), as every journal's a
        command opens here.

        :raises RecoveryPending: a `journal recover-from-backup` was cut short.
        """
        from flywall.core.appliance.journalfile import WorkspaceJournal
        from flywall.core.appliance.recovery_intent import refuse_if_pending

        refuse_if_pending(self.paths.journal)
        return WorkspaceJournal.open_existing(self.paths.journal, key=self.device_key())

    def write_journal(self, *, recovering: bool = False) -> Journal:
        """Open (creating) the journal for writing: under the writer lock, or the outbox's own lock.

        Appends are safe from either: SQLite serialises writers and the chain trigger refuses
        an event that does not extend the head.

        :param recovering: only the recovery that owns the intent file (`journal
            recover-from-backup`) passes it, to journal itself before removing the file.
        :raises RecoveryPending: a `journal recover-from-backup` was cut short.
        """
        from flywall.core.appliance.journalfile import WorkspaceJournal
        from flywall.core.appliance.recovery_intent import refuse_if_pending

        if not recovering:
            refuse_if_pending(self.paths.journal)
        self.paths.journal.parent.mkdir(parents=True, exist_ok=True)
        return WorkspaceJournal.open(
            self.paths.journal,
            key=self.device_key(),
            synchronous=self.sqlite.journal_synchronous,
            vfs=self.sqlite.vfs,
            autocheckpoint=self.sqlite.wal_autocheckpoint,
        )

    def file_targets(self) -> dict[str, Path]:
        """Where the file components live: "config" and "api" to their paths."""
        return {"config": self.paths.config, "api": self.paths.api_document}

    def device_key(self) -> bytes | None:
        """Return the device key that turns the hash chain into a MAC, if configured.

        `device_key_file` holds 32 raw bytes or 64 hex characters, and must be mode 0600.

        :raises SettingsError: the file is missing, readable by others, or malformed.
        """
        path = self.paths.device_key_file
        if path is None:
            return None
        if self._device_key is None:
            self._device_key = _read_device_key(path)
        return self._device_key


def _read_device_key(path: Path) -> bytes:
    from flywall.core.model.errors import SettingsError

    try:
        mode = path.stat().st_mode & 0o777
        raw = path.read_bytes()
    except OSError as e:
        raise SettingsError(f"{path}: device key file: cannot read: {e.strerror}") from e
    if mode & 0o077:
        raise SettingsError(f"{path}: device key file must be mode 0600 (it is {mode:04o})")
    from flywall.core.appliance.keys import raw_or_hex  # the same two forms as a signing key

    key = raw_or_hex(raw)
    if key is not None:
        return key
    raise SettingsError(f"{path}: device key file must hold 32 raw bytes or 64 hex characters")
