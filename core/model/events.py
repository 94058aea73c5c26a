"""Every event of the journal, as frozen, tagged msgspec Structs (DESIGN §5).

Events are past-tense facts. The journal row carries the migration version and run id as
columns (hashed with the body), so bodies do not repeat them. Evolve additively: new fields
get defaults and go last; never retype, rename or reorder a stored field.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import msgspec


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who caused an event: the OS user, or the API token's name (`via`)."""

    user: str
    uid: int
    host: str
    pid: int
    via: str = "cli"


def current_actor(via: str = "cli", user: str | None = None) -> Actor:
    """Describe the person or client running this process."""
    try:
        login = user or _login()
    except (KeyError, OSError):
        login = str(os.getuid())
    host = os.uname().nodename  # what socket.gethostname() returns, without socket
    return Actor(user=login, uid=os.getuid(), host=host, pid=os.getpid(), via=via)


def _login() -> str:
    """`getpass.getuser()` without importing getpass (termios) on every command."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if login := os.environ.get(name):
            return login
    import pwd  # only when the environment names nobody

    return pwd.getpwuid(os.getuid()).pw_name


class Event(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base of all events; the tag (the class name) is the journal row's `kind`."""


Direction = Literal["up", "down"]


class RunStarted(Event, frozen=True):
    """A writing command took the lock and began; `planned` lists what it means to do."""

    command: str
    actor: Actor
    planned: list[str] = []
    target: str | None = None
    strategy: str = "incremental"
    accepted_drift: list[str] = []


class RunFinished(Event, frozen=True):
    """A run ended: completed, failed, or interrupted (written later by recovery)."""

    outcome: Literal["completed", "failed", "interrupted"]
    done: list[str] = []
    error: str | None = None
    confirm_by_ns: int | None = None
    """With `confirm_within`: the run is rolled back unless confirmed by then."""


class RunConfirmed(Event, frozen=True):
    """The appliance (or an operator) confirmed a run within its confirmation window."""

    actor: Actor


class ConfirmationExpired(Event, frozen=True):
    """A run was not confirmed in time; recovery rolls back what it applied."""

    confirm_by_ns: int


class MigrationStarted(Event, frozen=True):
    """Write-ahead: durable before the migration touches its target."""

    direction: Direction
    component: str
    checksum: str
    attempt: int
    slug: str = ""
    description: str = ""
    schema_version: str | None = None
    fingerprint_before: str | None = None
    actor: Actor | None = None
    file: str = ""
    backup_id: str | None = None
    """Set when the step is a backup restore rather than the migration's own code."""


class WriteIntent(Event, frozen=True):
    """A file target is about to be replaced: both contents are stored in `sources`."""

    direction: Direction
    path: str
    digest_before: str | None
    digest_after: str
    backup_id: str | None = None


class MigrationApplied(Event, frozen=True):
    """`up` committed together with its marker in the target."""

    duration_ns: int
    fingerprint_after: str | None = None
    schema_version: str | None = None


class MigrationFailed(Event, frozen=True):
    """The migration failed; its target was left as before (the transaction undone)."""

    direction: Direction
    phase: str
    error_type: str
    message: str
    duration_ns: int = 0


class MigrationRolledBack(Event, frozen=True):
    """`down` committed (or a backup was restored) and the marker is gone."""

    via: Literal["down", "backup"]
    duration_ns: int = 0
    fingerprint_after: str | None = None


class MigrationLog(Event, frozen=True):
    """A line the migration wrote with `ctx.log()`."""

    message: str
    level: str = "info"


class BatchCommitted(Event, frozen=True):
    """A batch of a state migration committed with its checkpoint in the target."""

    last_key: str
    rows: int
    total_rows: int = 0


class BackupCreated(Event, frozen=True):
    """A backup of the targets was written and fsynced."""

    backup_id: str
    location: str
    items: list[str] = []
    size: int = 0


class BackupRestored(Event, frozen=True):
    """The targets were restored from a backup."""

    backup_id: str
    actor: Actor | None = None
    safety_backup_id: str | None = None
    fingerprint_after: str | None = None


class BackupPruned(Event, frozen=True):
    """A backup was removed by retention or by the operator."""

    backup_id: str
    reason: str


class ValidationPerformed(Event, frozen=True):
    """A validation ran; `checks` maps each check's name to "ok" or its finding."""

    checks: dict[str, str]
    ok: bool
    phase: str = "manual"


class StateForced(Event, frozen=True):
    """An operator set a migration's state by hand, with a reason.

    For a migration the journal has never seen run, it also carries the file's identity
    (component, checksum, ...), so a forced "applied" is bound to the file as an applied
    one is, and `migrate` does not take the file for an edited one.
    """

    from_state: str
    to_state: str
    reason: str
    actor: Actor
    component: str = ""
    checksum: str = ""
    file: str = ""
    slug: str = ""
    description: str = ""
    schema_version: str | None = None


class Recovered(Event, frozen=True):
    """Recovery decided the fate of an interrupted migration, from the named evidence."""

    direction: Direction
    decision: Literal["applied", "failed", "rolled_back"]
    evidence: dict[str, str]
    interrupted_run: str = ""


class DryRunPerformed(Event, frozen=True):
    """A dry run executed the plan against copies; nothing else changed."""

    planned: list[str]
    actor: Actor
    ok: bool = True


class DeviceKeyAdopted(Event, frozen=True):
    """A journal begun without a device key is keyed from this event on (its first MAC).

    `key_id` names the key without revealing it (a keyed hash of a fixed text), so an
    auditor can tell which key a verification needs.
    """

    actor: Actor
    key_id: str


class NotificationDelivered(Event, frozen=True):
    """The outbox delivered events up to `through_seq` to `channel`."""

    channel: str
    through_seq: int


class NotificationChannelStarted(Event, frozen=True):
    """A channel met for the first time: it is sent the notices after `after_seq` only.

    `after_seq` is just before the newest run's `RunStarted`, so the run that follows adding
    a channel (or `notify` right after) reaches it, and the journal's older history does not:
    a channel added to a box with years of runs must not flood its inbox with them.
    """

    channel: str
    after_seq: int


class NotificationFailed(Event, frozen=True):
    """A channel could not be reached; it will be retried."""

    channel: str
    through_seq: int
    error: str


class DaemonStopRequested(Event, frozen=True):
    """The run is about to call `stop_command` on the live Flywall daemon.

    Durable before the command runs: a run cut off before `DaemonStarted` tells the next
    run that it owes the daemon a start.
    """

    pid: int
    command: list[str]


class DaemonStopped(Event, frozen=True):
    """`stop_command` succeeded and the daemon's pid is gone."""

    pid: int
    output: str = ""


class DaemonStarted(Event, frozen=True):
    """`start_command` succeeded: the daemon a run stopped runs again."""

    command: list[str]
    output: str = ""


class DaemonCommandFailed(Event, frozen=True):
    """`stop_command` or `start_command` exited non-zero (or could not run)."""

    which: Literal["stop", "start"]
    exit_code: int
    output: str


class MigrationRepaired(Event, frozen=True):
    """An operator bound an applied migration to its edited file (`repair`, as Flyway's).

    Both digests are kept: what was applied and what the file is now, with who and why.
    """

    checksum_before: str
    checksum_after: str
    reason: str
    actor: Actor


class JournalRecovered(Event, frozen=True):
    """A damaged journal was replaced by a backup's copy (`journal recover-from-backup`).

    The targets were restored from the same backup; the damaged journal was kept at
    `damaged_path` (with its -wal and -shm), its main file's blake3 is `damaged_digest`.
    `journal_seq` is the copy's head: every event before this one is the backup's.
    """

    backup_id: str
    damaged_path: str
    damaged_digest: str
    reason: str
    journal_seq: int
    actor: Actor


AnyEvent = (
    RunStarted
    | RunFinished
    | RunConfirmed
    | ConfirmationExpired
    | MigrationStarted
    | WriteIntent
    | MigrationApplied
    | MigrationFailed
    | MigrationRolledBack
    | MigrationLog
    | BatchCommitted
    | BackupCreated
    | BackupRestored
    | BackupPruned
    | ValidationPerformed
    | StateForced
    | Recovered
    | DryRunPerformed
    | DeviceKeyAdopted
    | NotificationDelivered
    | NotificationChannelStarted
    | NotificationFailed
    | DaemonStopRequested
    | DaemonStopped
    | DaemonStarted
    | DaemonCommandFailed
    | MigrationRepaired
    | JournalRecovered
)

_encoder = msgspec.msgpack.Encoder()


@functools.cache
def _decoder() -> msgspec.msgpack.Decoder[AnyEvent]:
    """The union's decoder, built on the first decode.

    Building it reads the annotations of every event class (~0.9 ms), and a writer or
    status whose snapshot is current decodes no event at all.
    """
    return msgspec.msgpack.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    """Return the bytes stored (and hashed) for `event`."""
    return _encoder.encode(event)


def decode(body: bytes) -> AnyEvent:
    """Decode a stored body. :raises msgspec.DecodeError: unknown kind or bad shape."""
    return _decoder().decode(body)


def kind_of(event: Event) -> str:
    """Return the journal `kind` of an event: its tag."""
    return type(event).__name__
