"""The `config` (flywall.hcl) and `api` (api.json) targets: documents in plain files.

A migration edits the document in memory; the engine then replaces the file by the
journaled protocol of DESIGN §7: `WriteIntent` (both contents stored in the journal's
sources) is durable first, then `fileio.replace`. An edit that changes nothing writes
nothing, so a no-op migration leaves the file bit-for-bit as it was.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import blake3
import msgspec


def digest(content: bytes | None) -> str | None:
    """Return the blake3 of a file's bytes (None for a missing file)."""
    return None if content is None else blake3.blake3(content).hexdigest()


class FileTarget:
    """A document in a file: how to open it for a migration and how to write it back."""

    component = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, content: bytes | None) -> Any:
        """Return the editable document a migration's up/down receives."""
        raise NotImplementedError

    def render(self, document: Any, original: bytes | None) -> bytes | None:
        """Return the bytes to write, or `original` when the migration changed nothing."""
        raise NotImplementedError


class ConfigTarget(FileTarget):
    """flywall.hcl, edited through the comment- and layout-preserving HCL document."""

    component = "config"

    def open(self, content: bytes | None) -> Any:
        """Parse the file (an absent file is an empty document).

        :raises ConfigParseError: naming the file, line and column.
        """
        from flywall.core.formats.hcl import Document

        text = "" if content is None else content.decode("utf-8")
        return Document.parse(text, str(self.path))

    def render(self, document: Any, original: bytes | None) -> bytes | None:
        """Return the spliced text; the original bytes when nothing changed."""
        return document.text().encode("utf-8") if document.changed else original


class _Opened:
    """An API document plus a deep copy of it as it was, to tell a no-op from an edit.

    Not a projection snapshot (`flywall.core.runtime.snapshot`): it lives for one step.
    """

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value
        self.original = copy.deepcopy(value)


class ApiTarget(FileTarget):
    """api.json: a JSON object a migration mutates in place; key order is kept."""

    component = "api"

    def open(self, content: bytes | None) -> Any:
        """Decode the file into a dict (an absent file is `{}`).

        :raises msgspec.DecodeError: the file is not a JSON object; the message names it.
        """
        try:
            value = {} if content is None else msgspec.json.decode(content)
        except msgspec.DecodeError as e:
            raise msgspec.DecodeError(f"{self.path}: {e}") from e
        if not isinstance(value, dict):
            msg = f"{self.path}: expected a JSON object at the top level"
            raise msgspec.DecodeError(msg)
        self._opened = _Opened(value)
        return value

    def render(self, document: Any, original: bytes | None) -> bytes | None:
        """Return indented JSON with a final newline; the original bytes if unchanged."""
        if document == self._opened.original and original is not None:
            return original
        return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def target_for(component: str, config: Path, api: Path) -> FileTarget:
    """Return the file target of `component` ("config" or "api")."""
    return ConfigTarget(config) if component == "config" else ApiTarget(api)
