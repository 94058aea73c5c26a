"""The `config` (flywall.hcl) and `api` (api.json) targets: documents in plain files.

A migration edits the document in memory; the file is then replaced by the journaled
protocol of DESIGN §7: `WriteIntent` (both contents stored in the journal's sources) is
durable first (`Step.intend`), then `fileio.replace`. An edit that changes nothing writes
nothing, so a no-op migration leaves the file bit-for-bit as it was. The evidence after a
crash is the file's digest against the intent's before and after.
"""

from __future__ import annotations

import copy as _copy
from typing import TYPE_CHECKING, Any

import blake3
import msgspec

from flywall.core.model.errors import ValidationFailed
from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint
from flywall.core.targets.protocol import Copy, Evidence

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from flywall.core.model.projection import MigrationRecord
    from flywall.core.targets.protocol import Step


def digest(content: bytes | None) -> str | None:
    """Return the blake3 of a file's bytes (None for a missing file)."""
    return None if content is None else blake3.blake3(content).hexdigest()


class FileTarget:
    """A document in a file: how to open it for a migration and how to write it back."""

    component = ""
    marked = False

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        """The document's file, as settings name it (a symlink is resolved on write)."""
        return self._path

    def parse(self, content: bytes | None) -> Any:
        """Return the editable document a migration's up/down receives."""
        raise NotImplementedError

    def render(self, document: Any, original: bytes | None) -> bytes | None:
        """Return the bytes to write, or `original` when the migration changed nothing."""
        raise NotImplementedError

    def open(self, step: Step) -> Any:  # noqa: ARG002 - the protocol's; a document has one form
        """The document as the file holds it now."""
        return self.parse(fileio.read(self._path))

    def apply(self, step: Step, change: Callable[[Any], None]) -> str | None:
        """Edit the document in memory, then write it by the journaled replace."""
        before = fileio.read(self._path)
        self.write(step, before, self.edit(before, change))
        return None

    def edit(self, before: bytes | None, change: Callable[[Any], None]) -> bytes | None:
        """Run `change` on the document of `before`; return the bytes it renders to."""
        document = self.parse(before)
        change(document)
        return self.render(document, before)

    def write(self, step: Step, before: bytes | None, after: bytes | None) -> None:
        """Replace the file with `after`, its intent durable first; nothing if unchanged."""
        if after is None or after == before:
            return
        step.intend(before, after)
        fileio.replace(self._path, after)

    def evidence(self, record: MigrationRecord) -> Evidence:
        """DESIGN §7's decision table for a file: its digest against the durable intent."""
        intent = record.intent
        if intent is None:
            return Evidence(done=False, evidence={"write_intent": "none: the file was not touched"})
        path = self._path
        current = digest(fileio.read(path))
        evidence = {
            "target": str(path),
            "digest_before": intent.digest_before or "(no file)",
            "digest_after": intent.digest_after,
            "digest_now": current or "(no file)",
        }
        if current == intent.digest_after:
            return Evidence(done=True, evidence=evidence)
        if current == intent.digest_before:
            temp = digest(fileio.read(fileio.temp_path(fileio.resolve(path))))
            evidence["temp_file"] = temp or "(none)"
            if temp == intent.digest_after:
                return Evidence(done=True, evidence=evidence, action="roll_forward")
            return Evidence(done=False, evidence=evidence)
        if current is None:
            return Evidence(done=True, evidence=evidence, action="rewrite")
        raise ValidationFailed(
            f"{path}: edited by someone else during an interrupted migration "
            f"{record.version}: it is {current}, expected before {intent.digest_before} "
            f"or after {intent.digest_after}; both contents are kept in the journal"
        )

    def verify(self, check: Callable[[Any], None]) -> None:
        """Run `check` on the document parsed fresh from the file; nothing is written."""
        check(self.parse(fileio.read(self._path)))

    def backup(
        self,
        copy: Path,
        io: fileio.IO,
        alongside: Callable[[], None],  # noqa: ARG002 - no long copy here to overlap it with
        *,
        held: bool = False,  # noqa: ARG002 - state.db's write lock: no concern of a document
    ) -> Copy:
        """Copy the file's bytes (read whole: a document is small); `alongside` is the caller's."""
        data = fileio.read(self._path) or b""
        io.write_new(copy, data, 0o600)
        return Copy(len(data), blake3.blake3(data).hexdigest())

    def restore(self, copy: Path | None) -> None:
        """Replace the file with `copy` atomically; None: remove it (it was absent)."""
        if copy is not None:
            fileio.replace(self._path, copy.read_bytes())
        elif self._path.exists():
            fileio.REAL.unlink(self._path)
            fileio.REAL.fsync_dir(self._path.parent)
        crashpoint("restore-file-done")


class ConfigTarget(FileTarget):
    """flywall.hcl, edited through the comment- and layout-preserving HCL document."""

    component = "config"

    def parse(self, content: bytes | None) -> Any:
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
        self.original = _copy.deepcopy(value)


class ApiTarget(FileTarget):
    """api.json: a JSON object a migration mutates in place; key order is kept."""

    component = "api"

    def parse(self, content: bytes | None) -> Any:
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
