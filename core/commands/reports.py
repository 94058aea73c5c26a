"""The typed answers of the commands: what a face renders or serializes (msgspec Structs).

Importing this module imports the engine and the rehearsal code; the faces import it under
TYPE_CHECKING, or where they serialize a report (the HTTP API's handlers).
"""

from flywall.core.commands import (
    AdoptReport,
    BackupRow,
    ChecksumRow,
    JournalInfo,
    MigrationRow,
    PathsInfo,
    StatusReport,
    VerifyReport,
)
from flywall.core.rehearsal.dryrun import DryRunReport
from flywall.core.rehearsal.trial import TrialReport, TrialStep
from flywall.core.runtime.engine import RunReport
from flywall.core.services.validate import ValidationReport, Verdict

__all__ = [
    "AdoptReport",
    "BackupRow",
    "ChecksumRow",
    "DryRunReport",
    "JournalInfo",
    "MigrationRow",
    "PathsInfo",
    "RunReport",
    "StatusReport",
    "TrialReport",
    "TrialStep",
    "ValidationReport",
    "Verdict",
    "VerifyReport",
]
