"""The intent file of a `journal recover-from-backup`: while it exists, no command uses the journal.

Beside the workspace (which checks it each time it opens the journal) rather than in the
recovery itself (flywall.core.services.rescue), which writes and removes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from flywall.core.model.errors import FlywallError

if TYPE_CHECKING:
    from pathlib import Path

COMMAND = "flywall migration journal recover-from-backup"
COMMAND_NAME = "journal recover-from-backup"
"""The name its run is journaled under (RunStarted.command), as the CLI spells it."""


class RecoveryPending(FlywallError):
    """An interrupted `journal recover-from-backup` must be finished before anything else."""

    exit_code = 4


class RecoveryIntent(msgspec.Struct, frozen=True, kw_only=True):
    """What a recovery decided before its first side effect (the intent file's content)."""

    backup_id: str
    damaged: str
    """Where the damaged journal is kept; "" when there was no journal file at all."""
    damaged_digest: str
    reason: str
    started_ns: int


def intent_path(journal: Path) -> Path:
    """The intent file beside the journal."""
    return journal.with_name(journal.name + ".recovery")


def refuse_if_pending(journal: Path) -> None:
    """Refuse to use a journal whose recovery from a backup was cut short.

    :raises RecoveryPending: naming the intent file and the command that finishes it.
    """
    path = intent_path(journal)
    if not path.exists():
        return
    try:
        backup_id = msgspec.json.decode(path.read_bytes(), type=RecoveryIntent).backup_id
    except (OSError, msgspec.DecodeError):
        backup_id = "BACKUP_ID"
    raise RecoveryPending(
        f"{path}: a recovery of the journal from backup {backup_id} was interrupted; "
        f"finish it: {COMMAND} {backup_id} --yes"
    )
