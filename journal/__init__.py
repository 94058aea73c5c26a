"""The append-only, hash-chained event journal. Knows nothing of migrations."""

from flywall.journal.chain import (
    ADOPTED,
    GENESIS,
    ChainEnd,
    event_hash,
    key_id,
    walk_chain,
)
from flywall.journal.errors import (
    JournalConflict,
    JournalCorrupt,
    JournalError,
    JournalKeyedAlready,
    JournalTooNew,
    JournalUnreadable,
)
from flywall.journal.rows import Entry, StoredEvent
from flywall.journal.store import Journal

__all__ = [
    "ADOPTED",
    "GENESIS",
    "ChainEnd",
    "Entry",
    "Journal",
    "JournalConflict",
    "JournalCorrupt",
    "JournalError",
    "JournalKeyedAlready",
    "JournalTooNew",
    "JournalUnreadable",
    "StoredEvent",
    "event_hash",
    "key_id",
    "walk_chain",
]
