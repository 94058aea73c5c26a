"""The journal as the workspace opens it: its errors arrive as the project's own.

The journal package knows nothing of ours, so its errors are its own (`JournalError` and
kin). They are translated here, once, at the workspace boundary, into the `FlywallError`
family with the messages and exit codes they always had: a broken chain is
`JournalTampered` (exit 4, HTTP 422), a file SQLite cannot read `JournalDamaged` (4,
422), a chain keyed already `ChainKeyedAlready`, and any other `JournalFailed` (2,
500). Every journal a command uses is opened by `Workspace.read_journal`/`write_journal`
as a `WorkspaceJournal`, so nothing above it, and no face, meets a journal error.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Self

from flywall.core.model import errors
from flywall.journal import (
    Journal,
    JournalCorrupt,
    JournalError,
    JournalKeyedAlready,
    JournalUnreadable,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flywall.journal import ChainEnd, Entry, StoredEvent


def journal_failure(e: JournalError) -> errors.FlywallError:
    """The one translation of a journal error: same message, same exit code as before."""
    if isinstance(e, JournalCorrupt):
        return errors.JournalTampered(e.seq, e.detail)
    if isinstance(e, JournalUnreadable):
        return errors.JournalDamaged(str(e))
    if isinstance(e, JournalKeyedAlready):
        return errors.ChainKeyedAlready(str(e), e.keyed_from)
    return errors.JournalFailed(str(e))


@contextlib.contextmanager
def journal_errors() -> Iterator[None]:
    """Raise each journal error inside as its translation (`raise ... from` the original)."""
    try:
        yield
    except JournalError as e:
        raise journal_failure(e) from e


class WorkspaceJournal(Journal):
    """A `Journal` whose every call raises the project's errors, never the journal's."""

    @classmethod
    def open(cls, *args: Any, **kwargs: Any) -> Self:
        """As `Journal.open`, raising the project's errors."""
        with journal_errors():
            return super().open(*args, **kwargs)

    @classmethod
    def open_existing(cls, *args: Any, **kwargs: Any) -> Self | None:
        """As `Journal.open_existing`, raising the project's errors."""
        with journal_errors():
            return super().open_existing(*args, **kwargs)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """As `Journal.reading`, raising the project's errors."""
        with journal_errors(), super().reading():
            yield

    def append(self, *args: Any, **kwargs: Any) -> list[StoredEvent]:
        """As `Journal.append`, raising the project's errors."""
        with journal_errors():
            return super().append(*args, **kwargs)

    def adopt_key(self, entry: Entry) -> StoredEvent:
        """As `Journal.adopt_key`, raising the project's errors."""
        with journal_errors():
            return super().adopt_key(entry)

    def head(self) -> tuple[int, bytes]:
        """As `Journal.head`, raising the project's errors."""
        with journal_errors():
            return super().head()

    def read(self, *args: Any, **kwargs: Any) -> Iterator[StoredEvent]:
        """As `Journal.read`, raising the project's errors."""
        with journal_errors():
            yield from super().read(*args, **kwargs)

    def source(self, digest: str) -> bytes | None:
        """As `Journal.source`, raising the project's errors."""
        with journal_errors():
            return super().source(digest)

    def chain_kind(self) -> str | None:
        """As `Journal.chain_kind`, raising the project's errors."""
        with journal_errors():
            return super().chain_kind()

    def verify(self, since: ChainEnd | None = None) -> ChainEnd:
        """As `Journal.verify`, raising the project's errors."""
        with journal_errors():
            return super().verify(since)

    def verified_point(self) -> ChainEnd | None:
        """As `Journal.verified_point`, raising the project's errors."""
        with journal_errors():
            return super().verified_point()

    def record_verified(self, end: ChainEnd) -> None:
        """As `Journal.record_verified`, raising the project's errors."""
        with journal_errors():
            super().record_verified(end)
