"""The append-only, hash-chained event journal. Knows nothing of migrations."""

from flywall.journal.chain import GENESIS, event_hash, verify_chain
from flywall.journal.errors import JournalConflict, JournalCorrupt, JournalError, JournalTooNew
from flywall.journal.store import Entry, Journal, StoredEvent

__all__ = [
    "GENESIS",
    "Entry",
    "Journal",
    "JournalConflict",
    "JournalCorrupt",
    "JournalError",
    "JournalTooNew",
    "StoredEvent",
    "event_hash",
    "verify_chain",
]
