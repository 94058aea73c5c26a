"""Audit and forensics: status as it was, filtered history, and an export anyone can verify.

- `replay` rebuilds the state at a past seq (or time) by replaying the journal's prefix
  through the lifecycle, after checking that prefix's chain.
- `EventFilter` selects history by kind, actor and a seq or time range.
- `export` writes the journal as JSON lines; `verify_export` re-hashes such a file with
  `flywall.journal.chain.event_hash` and names the first line that was altered, so an
  auditor can check a copy offline (with the device key, if the journal is keyed).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, get_args

import msgspec

from flywall.core.appliance.journalfile import journal_errors
from flywall.core.model import errors, projection
from flywall.core.model import events as ev
from flywall.core.model.projection import run_summary
from flywall.core.model.times import iso
from flywall.journal import ADOPTED, GENESIS, event_hash, walk_chain

if TYPE_CHECKING:
    from collections.abc import Sequence

    from flywall.core.appliance.workspace import Workspace
    from flywall.journal import Journal, StoredEvent

KINDS = tuple(sorted(cls.__name__ for cls in get_args(ev.AnyEvent)))
"""Every event kind the journal can hold."""


def parse_time(text: str, *, end: bool = False) -> int:
    """Read an ISO-8601 time (UTC when it names no zone) as ns since the epoch.

    A time covers the whole unit it is written to, so that a time copied from `history`
    (milliseconds) includes the event shown: with `end`, the last ns of that unit is
    returned (of the day for a date, of the second for ``12:00:05``, and so on).

    :raises UsageError: the text is not an ISO-8601 date or time.
    """
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise errors.UsageError(f"{text!r} is neither a seq nor an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ns = (when - _EPOCH) // dt.timedelta(microseconds=1) * 1000  # exact, no float
    if not end:
        return ns
    clock = _CLOCK.search(text)
    if clock is None:
        unit = 86_400 * 10**9
    elif clock[1] is None:
        unit = 60 * 10**9
    else:
        unit = 10 ** (9 - min(len(clock[2] or ""), 9))
    return ns + unit - 1


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CLOCK = re.compile(r"[T ]\d{2}:\d{2}(:\d{2}(?:[.,](\d+))?)?")


_SEQ = re.compile(r"[0-9]+")
_SEQ_DIGITS = 19  # 2**63 - 1, SQLite's largest integer


def as_seq(text: str) -> int | None:
    """Return `text` as a seq if it is ASCII digits, else None (a time, then).

    Not `isdigit()`: it takes '²' and other scripts' digits, which `int()` refuses or reads
    as a different number.

    :raises UsageError: more digits than any seq has (`int()` fails past 4,300).
    """
    if not _SEQ.fullmatch(text):
        return None
    if len(text.lstrip("0")) > _SEQ_DIGITS:
        raise errors.UsageError(f"{text[:64]!r}: no seq has {len(text)} digits")
    return int(text)


def point(journal: Journal, text: str) -> int:
    """Turn SEQ or TIME into a seq: for a time, the last seq at or before it (0 if none)."""
    if (seq := as_seq(text)) is not None:
        return seq
    row = journal.connection.execute(
        "SELECT max(seq) FROM events WHERE at_ns <= ?", (parse_time(text, end=True),)
    ).fetchone()
    assert row is not None  # an aggregate always returns one row
    return int(row[0] or 0)


# -- replay -------------------------------------------------------------------------


class ReplayReport(msgspec.Struct, kw_only=True):
    """The state of the appliance as the journal described it at `seq`."""

    seq: int
    at: str | None
    head_hash: str
    components: dict[str, str]
    counts: dict[str, int]
    migrations: list[dict[str, Any]]
    running: list[dict[str, Any]]
    last_run: dict[str, Any] | None


def replay(ws: Workspace, until: str) -> ReplayReport:
    """Replay the journal up to seq (or ISO-8601 time) `until`; verify that prefix first.

    :raises UsageError: `until` is past the journal's head or not a seq or time.
    :raises JournalTampered: the prefix's chain or event stream is broken, naming the seq.
    """
    from flywall.core.model.lifecycle import Lifecycle

    journal = ws.read_journal()
    if journal is None:
        raise errors.UsageError(f"{ws.paths.journal}: no journal yet; nothing to replay")
    with journal:
        seq = point(journal, until)
        head, _ = journal.head()
        if seq > head:
            raise errors.UsageError(f"--until {seq}: the journal ends at seq {head}")
        rows = list(journal.read(until=seq))
        key = ws.device_key()
        keyed = journal.chain_kind() != "plain" and key is not None
        with journal_errors():  # a prefix from before a key was adopted: the plain chain
            walk_chain(rows, key, keyed=keyed)
        state = projection.replay(rows, Lifecycle())
    return ReplayReport(
        seq=state.seq,
        at=iso(rows[-1].at_ns) if rows else None,
        head_hash=state.head_hash.hex(),
        components=state.components(),
        counts=state.counts(),
        migrations=[
            {
                "version": r.version,
                "component": r.component,
                "state": r.state.value,
                "checksum": r.checksum,
                "applied_at": iso(r.applied_at_ns),
                "last_error": r.last_error,
            }
            for r in sorted(state.migrations.values(), key=lambda r: r.version)
        ],
        running=[
            {"run_id": r.run_id, "command": r.command, "user": r.user, "since": iso(r.started_ns)}
            for r in state.open_runs.values()
        ],
        last_run=run_summary(state.last_run),
    )


# -- history filters ----------------------------------------------------------------


class EventFilter:
    """Which events `history` shows: by kind, by actor, and from `since` to `until`.

    `since` and `until` are each a seq or an ISO-8601 time, both inclusive. An event's
    actor is its own (`actor` field) or else that of the run it belongs to; a name matches
    the user, `user@host`, or the interface (`via`, e.g. an API token's name).
    """

    def __init__(
        self,
        *,
        kinds: Sequence[str] = (),
        actor: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            names = ", ".join(KINDS)
            raise errors.UsageError(f"unknown event kind {unknown[0]!r}: use one of {names}")
        self.kinds = set(kinds)
        self.actor = actor
        self._since, self._until = _bound(since, end=False), _bound(until, end=True)
        self._run_actors: dict[str, dict[str, Any]] = {}

    def prepare(self, journal: Journal) -> None:
        """Learn each run's actor (a migration's own events do not repeat it)."""
        if self.actor is None:
            return
        for run_id, body in journal.connection.execute(
            "SELECT run_id, body FROM events WHERE kind = 'RunStarted'"
        ):
            try:
                started = ev.decode(body)
            except msgspec.DecodeError:
                continue
            if isinstance(started, ev.RunStarted):
                self._run_actors[run_id] = msgspec.to_builtins(started.actor)

    def __call__(self, row: StoredEvent, fields: dict[str, Any]) -> bool:
        """Tell whether the event (its row, and its rendered fields) is selected."""
        if self.kinds and row.kind not in self.kinds:
            return False
        for bound, keep in ((self._since, _ge), (self._until, _le)):
            if bound is not None:
                unit, value = bound
                if not keep(row.seq if unit == "seq" else row.at_ns, value):
                    return False
        if self.actor is not None:
            actor = fields.get("actor") or self._run_actors.get(row.run_id)
            if not isinstance(actor, dict):
                return False
            names = {actor["user"], f"{actor['user']}@{actor['host']}", actor.get("via", "")}
            names.add(str(actor.get("via", "")).rpartition(":")[2])
            return self.actor in names
        return True


def _bound(text: str | None, *, end: bool) -> tuple[str, int] | None:
    if text is None:
        return None
    seq = as_seq(text)
    return ("seq", seq) if seq is not None else ("ns", parse_time(text, end=end))


def _ge(a: int, b: int) -> bool:
    return a >= b


def _le(a: int, b: int) -> bool:
    return a <= b


# -- export and offline verification ------------------------------------------------


class ExportLine(msgspec.Struct, kw_only=True):
    """One line of `journal export`: the stored row, plus its decoded event for reading.

    `body` (base64) is what is hashed; `event` and `at` are there for people, and
    `verify_export` checks that they agree with `body` and `at_ns`.
    """

    seq: int
    at_ns: int
    at: str | None
    run_id: str
    migration: str
    kind: str
    event: dict[str, Any] | None
    body: str
    prev_hash: str
    hash: str


def export_line(row: StoredEvent) -> ExportLine:
    """Render one stored event as an export line."""
    return ExportLine(
        seq=row.seq,
        at_ns=row.at_ns,
        at=iso(row.at_ns),
        run_id=row.run_id,
        migration=row.migration,
        kind=row.kind,
        event=_fields(row.body),
        body=base64.b64encode(row.body).decode("ascii"),
        prev_hash=row.prev_hash.hex(),
        hash=row.hash.hex(),
    )


def export(ws: Workspace, out: TextIO) -> int:
    """Write every journal event to `out` as one JSON line each; return how many."""
    journal = ws.read_journal()
    if journal is None:
        return 0
    count = 0
    with journal:
        for row in journal.read():
            out.write(msgspec.json.encode(export_line(row)).decode() + "\n")
            count += 1
    return count


def export_to(ws: Workspace, path: Path) -> int:
    """Write the export to `path` whole or not at all: a temp file beside it, then a rename.

    :raises UsageError: naming `path` when its folder cannot be written.
    """
    import os
    import tempfile

    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise errors.UsageError(f"{path}: cannot write: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            count = export(ws, out)
            out.flush()
            os.fsync(out.fileno())
        Path(temp).replace(path)
    except OSError as e:
        Path(temp).unlink(missing_ok=True)
        raise errors.UsageError(f"{path}: cannot write: {e.strerror}") from e
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return count


class ExportTampered(errors.ValidationFailed):
    """A line of an exported journal does not verify: names the file, line and seq."""

    def __init__(self, path: str, line: int, seq: int | None, detail: str) -> None:
        where = f"{path}:{line}" + (f" (seq {seq})" if seq is not None else "")
        super().__init__(f"{where}: {detail}")
        self.path, self.line, self.seq = path, line, seq


class ExportReport(msgspec.Struct, kw_only=True):
    """The result of verifying an exported journal."""

    path: str
    events: int
    head_hash: str
    keyed: bool
    ok: bool
    keyed_from: int | None = None
    """The seq from which the lines are device-key MACs (1, or a DeviceKeyAdopted's)."""


_line_decoder = msgspec.json.Decoder(ExportLine)


def verify_export(ws: Workspace, path: Path) -> ExportReport:
    """Re-hash every line of an export (with the device key, if configured).

    :raises ExportTampered: naming the first line that is malformed, out of order, not
        linked to the previous one, whose hash does not match, or whose readable fields
        (`event`, `at`) disagree with what is hashed.
    """
    key = ws.device_key()
    shown = str(path)
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise errors.UsageError(f"{shown}: cannot read: {e.strerror}") from e
    walk = _ExportWalk(key)
    for number, raw in enumerate(lines, start=1):
        try:
            line = _line_decoder.decode(raw)
            body = base64.b64decode(line.body, validate=True)
            prev_hash, digest = bytes.fromhex(line.prev_hash), bytes.fromhex(line.hash)
        except (msgspec.DecodeError, binascii.Error, ValueError) as e:
            raise ExportTampered(shown, number, None, f"not an export line: {e}") from e
        detail = walk.step(line, body, prev_hash, digest)
        if detail is not None:
            raise ExportTampered(shown, number, line.seq, detail)
    if key is not None and walk.keyed_from is None and walk.seq:
        detail = "plain hashes throughout, but a device key is configured: no line is a MAC"
        raise ExportTampered(shown, 1, 1, detail)
    return ExportReport(
        path=shown,
        events=walk.seq,
        head_hash=walk.prev.hex() if walk.seq else "",
        keyed=bool(key),
        ok=True,
        keyed_from=walk.keyed_from,
    )


class _ExportWalk:
    """Where a walk over export lines is: the last seq and hash, and what hashes the next.

    With a key, line 1 tells whether the journal was keyed from its start or begun plain;
    a plain one becomes keyed at its `DeviceKeyAdopted` line (the caller then requires
    that it did, or a chain stripped of its MACs would pass).
    """

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.mac = key
        self.keyed_from: int | None = None
        self.seq, self.prev = 0, GENESIS

    def step(self, line: ExportLine, body: bytes, prev_hash: bytes, digest: bytes) -> str | None:
        """Check one line and move past it; return what is wrong with it, or None."""
        if self.mac is None and line.kind == ADOPTED:
            if self.key is None:
                return "the device key was adopted here; configure it to check the rest"
            self.mac = self.key
        check = functools.partial(_check_line, line, body, self.seq, self.prev, prev_hash, digest)
        detail = check(self.mac)
        if detail is not None and self.seq == 0 and self.mac is not None and check(None) is None:
            self.mac = detail = None  # begun without a key: plain up to its DeviceKeyAdopted
        if detail is None:
            if self.mac is not None and self.keyed_from is None:
                self.keyed_from = line.seq
            self.seq, self.prev = line.seq, digest
        return detail


def _check_line(
    line: ExportLine,
    body: bytes,
    seq: int,
    prev: bytes,
    prev_hash: bytes,
    digest: bytes,
    key: bytes | None,
) -> str | None:
    """Return what is wrong with one export line, or None."""
    if line.seq != seq + 1:
        return f"expected seq {seq + 1}"
    if prev_hash != prev:
        return "prev_hash does not link to the line before"
    try:
        expected = event_hash(
            prev, line.seq, line.at_ns, line.kind, line.run_id, line.migration, body, key
        )
    except (OverflowError, ValueError, struct.error) as e:
        return f"bad field: {e}"
    if digest != expected:
        hint = "" if key or line.seq != 1 else " (a keyed journal? configure its device key)"
        return "hash does not match the event's content" + hint
    if line.event != _fields(body) or line.at != iso(line.at_ns):
        return "readable fields (event, at) disagree with the hashed body"
    return None


def _fields(body: bytes) -> dict[str, Any] | None:
    """Decode a body into plain JSON values (None if it does not decode)."""
    try:
        fields = msgspec.to_builtins(ev.decode(body))
    except msgspec.DecodeError:
        return None
    fields.pop("type", None)
    plain: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(fields))
    return plain
