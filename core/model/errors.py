"""The error tree of flywall-migration.

Every condition a user can cause is a `FlywallError` subclass that carries a one-line
message naming what and where, and the exit code the CLI returns for it (README, "Exit
codes"). The CLI catches only this base class; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_MIGRATION_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3
EXIT_VALIDATION = 4


class FlywallError(Exception):
    """Base of every error a user can cause; `exit_code` is what the CLI returns."""

    exit_code = EXIT_USAGE


class UsageError(FlywallError):
    """The command's arguments do not make sense (unknown version, bad option mix)."""


class MigrationsDisabled(UsageError):
    """`enabled = false` in the settings: commands that would move migrations refuse (exit 2)."""


class SettingsError(FlywallError):
    """The `migration { }` block is invalid; the message names the file and key."""


class ConfigParseError(FlywallError):
    """An HCL file does not parse; names file, line and column."""

    def __init__(self, path: str, line: int, column: int, detail: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {detail}")
        self.path = path
        self.line = line
        self.column = column


class DiscoveryError(FlywallError):
    """A migration file is unusable (bad name, syntax error, duplicate version...)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


class BrokenMigration(DiscoveryError):
    """A writing command met a broken migration file: it refuses before doing anything."""

    exit_code = EXIT_VALIDATION

    def __init__(self, error: DiscoveryError) -> None:
        FlywallError.__init__(self, f"{error}; nothing was run (fix or remove the file)")
        self.path = error.path


class GraphError(FlywallError):
    """The migrations' dependencies cannot be ordered (unknown, cycle, out of order)."""


class NothingToDo(FlywallError):
    """A rollback or target names nothing that can be done; not a failure of the tool."""


class MigrationFailed(FlywallError):
    """A migration raised or its transaction could not commit; journaled as MigrationFailed."""

    exit_code = EXIT_MIGRATION_FAILED

    def __init__(self, version: str, phase: str, error_type: str, message: str) -> None:
        super().__init__(f"migration {version} failed during {phase}: {error_type}: {message}")
        self.version = version
        self.phase = phase
        self.error_type = error_type
        self.detail = message


class RunInterrupted(FlywallError):
    """SIGINT or SIGTERM ended the run, journaled as failed; exit 128 + the signal (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.signum = signum


class DaemonNotStarted(FlywallError):
    """The run went well but `start_command` failed: Flywall is not running again."""

    exit_code = EXIT_MIGRATION_FAILED


class Busy(FlywallError):
    """Another process holds the single-writer lock."""

    exit_code = EXIT_BUSY


class ValidationFailed(FlywallError):
    """A check failed: drift, tampering, checksum mismatch, corrupt journal."""

    exit_code = EXIT_VALIDATION


class ChecksumMismatch(ValidationFailed):
    """An applied migration's file changed since it was applied."""

    def __init__(self, version: str, path: str, recorded: str, current: str) -> None:
        super().__init__(
            f"{path}: migration {version} was applied with checksum {recorded} "
            f"but the file now has {current}; restore the file or force its state"
        )
        self.version = version
        self.recorded = recorded
        self.current = current


class JournalTampered(ValidationFailed):
    """The journal's hash chain or event stream is broken at `seq`."""

    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(f"journal is corrupt at seq {seq}: {detail}")
        self.seq = seq


class JournalDamaged(ValidationFailed):
    """The journal file is not a SQLite database, or SQLite finds it malformed."""


class JournalFailed(FlywallError):
    """The journal cannot be opened, read or written (e.g. it is newer than this program)."""


class ChainKeyedAlready(JournalFailed):
    """A key adoption found the chain keyed already, from `keyed_from`: nothing was written."""

    def __init__(self, message: str, keyed_from: int) -> None:
        super().__init__(message)
        self.keyed_from = keyed_from


class IllegalTransition(FlywallError):
    """The lifecycle refuses a trigger in the migration's current state."""

    def __init__(self, version: str, state: str, trigger: str) -> None:
        super().__init__(f"migration {version} is {state}; cannot {trigger.replace('_', ' ')}")
        self.version = version
        self.state = state
        self.trigger = trigger


class DaemonUnhealthy(FlywallError):
    """Flywall's daemon did not answer its health check in time; nothing was confirmed."""

    exit_code = EXIT_MIGRATION_FAILED
