"""Typed answers of the read routes whose core functions return plain dicts.

`history`, `debug` and `log` return the dicts the CLI prints with `--json`; the API
converts them into these msgspec Structs, so its OpenAPI document states their shape
(one item type per journal event kind, told apart by `kind`) and a dict that strays from
it fails loudly instead of reaching a client undocumented.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from flywall.core.commands import ev

_ROW_FIELDS: list[tuple[str, Any, Any]] = [
    ("seq", int, msgspec.NODEFAULT),
    ("at", str | None, msgspec.NODEFAULT),
    ("migration", str | None, msgspec.NODEFAULT),
    ("run_id", str | None, msgspec.NODEFAULT),
    ("hash", str, msgspec.NODEFAULT),
]
"""A history item's own columns (`kind` is the tag); the event's fields follow."""


def _field(info: msgspec.structs.FieldInfo) -> tuple[str, Any, Any]:
    if info.default_factory is not msgspec.NODEFAULT:
        return (info.encode_name, info.type, msgspec.field(default_factory=info.default_factory))
    return (info.encode_name, info.type, info.default)


def _item_type(event: type[ev.Event]) -> type[msgspec.Struct]:
    """Build the history item Struct of one event kind: row columns, then its fields."""
    fields = [*_ROW_FIELDS, *(_field(f) for f in msgspec.structs.fields(event))]
    return msgspec.defstruct(
        f"{event.__name__}Item",
        fields,
        kw_only=True,
        tag_field="kind",
        tag=event.__name__,
        forbid_unknown_fields=True,
        module=__name__,
    )


_ITEMS = tuple(_item_type(t) for t in ev.AnyEvent.__args__)
HistoryItem = Union[_ITEMS]  # type: ignore[valid-type]  # noqa: UP007 - built at runtime
"""One journal event as `history --json` prints it."""


class Sql(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A SQL migration's sections (None for a section it lacks)."""

    up: str | None
    down: str | None
    verify: str | None


class DebugReport(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`debug V --json`: everything known about one migration."""

    version: str
    file: str | None
    component: str | None
    description: str
    checksum_on_disk: str | None
    checksum_recorded: str | None
    state: str
    last_error: str | None
    sql: Sql | None
    has_down: bool | None
    events: list[HistoryItem]
    log: list[HistoryItem]
    backups: list[str]


class LogLine(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One line a migration wrote with `ctx.log()`."""

    at: str | None
    run_id: str
    level: str
    message: str

    def render(self) -> str:
        """The line as `log V` prints it."""
        return f"{self.at}  {self.run_id}  {self.level:<5} {self.message}\n"


def history(items: list[dict[str, Any]]) -> list[Any]:
    """Type `commands.history`'s items. :raises msgspec.ValidationError: one strays."""
    return msgspec.convert(items, list[HistoryItem], str_keys=True)


def debug(report: dict[str, Any]) -> DebugReport:
    """Type `commands.debug`'s report. :raises msgspec.ValidationError: it strays."""
    return msgspec.convert(report, DebugReport, str_keys=True)


def log(lines: list[dict[str, Any]]) -> list[LogLine]:
    """Type `commands.log`'s lines. :raises msgspec.ValidationError: one strays."""
    return msgspec.convert(lines, list[LogLine], str_keys=True)
