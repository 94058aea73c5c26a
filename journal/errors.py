"""Errors of the journal layer, named after the condition they report (PEP 249 style)."""

from __future__ import annotations


class JournalError(Exception):
    """Base of every journal error."""


class JournalCorrupt(JournalError):
    """The stored events do not form the chain they claim to: names the first bad seq."""

    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(f"journal is corrupt at seq {seq}: {detail}")
        self.seq = seq
        self.detail = detail


class JournalUnreadable(JournalError):
    """The journal file is not a SQLite database (or SQLite finds it malformed): corrupt."""

    exit_code = 4  # as a broken chain: the CLI's "tampered or corrupt journal"


class JournalKeyedAlready(JournalError):
    """A key adoption found the chain keyed already, from `keyed_from`: nothing was written."""

    def __init__(self, path: str, keyed_from: int) -> None:
        super().__init__(f"{path}: the journal is keyed already, since seq {keyed_from}")
        self.keyed_from = keyed_from


class JournalConflict(JournalError):
    """An append lost a race or broke the append-only rule (translated from SQLite)."""


class JournalTooNew(JournalError):
    """The journal's internal schema is newer than this program understands."""
