"""An editable HCL document that writes by splicing (DESIGN §8).

A migration edits flywall.hcl through `Document`: find blocks by type and labels, get, set,
rename and delete attributes, add, remove, rename and relabel blocks, and move attributes and
blocks, as written, from one body into another. The promise is tomlkit's: bytes an edit did
not touch stay byte-identical (comments, blank lines, indentation, attribute order, heredocs),
so an operator's `diff` shows only the migration's change, and new lines copy the indentation
and line endings of their neighbours.

How it works, and why this way: the document keeps its current text and python-hcl2's raw Lark
tree of that text, whose tokens carry `start_pos`/`end_pos`. Each edit computes one or a few
`(start, end, replacement)` splices against the current offsets, refuses them if they overlap,
applies them at once and re-parses the whole text. The alternative, queueing splices against
the original offsets until `text()`, cannot address a block added earlier in the same session
(it has no offsets yet), so `zone.setdefault_block("services").set("dhcp", True)` would need a
second, shadow model. Re-parsing costs about a millisecond per kilobyte of config and buys two
things: every later edit sees exact offsets, and an edit that would leave the file unparseable
is refused on the spot, with the document unchanged.

`Block` handles stay valid across edits because they are keyed by the offset of the block's
first token: after each splice the document shifts every handle that lies after it, drops the
ones whose bytes were removed, and hands out the same handle object for the same block. So a
loop that removes blocks one by one still holds the right blocks, which an (type, labels,
index) path would not.

Limitations: `remove_block` removes the block's lines and one adjacent blank line, not the
comment lines above it, and `delete` leaves the blank lines around an attribute alone; a
one-line body (`match { interface = "eth1" }`) is expanded to one item per line before
anything is added to it; new values are written on one line; `${` and `%{` in a string are
always written as templates, never escaped.
"""

from __future__ import annotations

import contextlib
import math
import re
import textwrap
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, TypeAlias

from flywall.core.model.errors import ConfigParseError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from lark import Token, Tree

    Node: TypeAlias = Tree[Token]

__all__ = ["Block", "Body", "Document", "Expression", "Value"]


@dataclass(frozen=True)
class Expression:
    """An HCL expression that is not a plain value: a reference, a call, arithmetic...

    `get` returns one rather than guessing a Python value, and `set` writes `text` back
    verbatim, so such expressions can be moved between blocks without being understood.

    .. versionadded:: 0.1.0
    """

    text: str


Value: TypeAlias = "str | int | float | bool | Expression | list[Value] | dict[str, Value] | None"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HEREDOC_HEAD = re.compile(r"<<(-?)([A-Za-z][A-Za-z0-9._-]*)\r?\n")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_QUOTE_ESCAPES = {value: "\\" + key for key, value in _ESCAPES.items()}
_ITEMS = ("attribute", "block")
# HCL's own convention; used only when the file has no nested block to copy from.
_DEFAULT_INDENT = "  "


class _OnBody:
    """What a `Block` and a `Document` answer by their body.

    `body` is a block's braces' content, or a document's whole top level: a migration
    writes `config.blocks("zone")` as it writes `zone.blocks("match")`.

    .. versionadded:: 0.1.0
    """

    body: Body

    @property
    def attributes(self) -> dict[str, Value]:
        """Every attribute's value, in the file's order."""
        return self.body.attributes

    def get(self, name: str, default: Value = None) -> Value:
        """See `Body.get`."""
        return self.body.get(name, default)

    def has(self, name: str) -> bool:
        """See `Body.has`."""
        return self.body.has(name)

    def set(self, name: str, value: Value, *, first: bool = False) -> None:
        """See `Body.set`."""
        self.body.set(name, value, first=first)

    def source(self, name: str) -> str | None:
        """See `Body.source`."""
        return self.body.source(name)

    def move(self, item: str | Block, into: Body | Block) -> None:
        """See `Body.move`; `into` may be a block, meaning its body."""
        self.body.move(item, into.body if isinstance(into, Block) else into)

    def delete(self, name: str) -> bool:
        """See `Body.delete`."""
        return self.body.delete(name)

    def rename(self, name: str, new_name: str) -> bool:
        """See `Body.rename`."""
        return self.body.rename(name, new_name)

    def blocks(self, block_type: str | None = None, /, *labels: str) -> list[Block]:
        """See `Body.blocks`."""
        return self.body.blocks(block_type, *labels)

    def block(self, block_type: str, /, *labels: str) -> Block | None:
        """See `Body.block`."""
        return self.body.block(block_type, *labels)

    def add_block(self, block_type: str, /, *labels: str, **attributes: Value) -> Block:
        """See `Body.add_block`."""
        return self.body.add_block(block_type, *labels, **attributes)

    def setdefault_block(self, block_type: str, /, *labels: str, **attributes: Value) -> Block:
        """See `Body.setdefault_block`."""
        return self.body.setdefault_block(block_type, *labels, **attributes)

    def remove_block(self, block: Block) -> None:
        """See `Body.remove_block`."""
        self.body.remove_block(block)

    def rename_block(self, block: Block, new_type: str, /, *new_labels: str) -> None:
        """See `Body.rename_block`."""
        self.body.rename_block(block, new_type, *new_labels)

    def relabel(self, block: Block, /, *labels: str) -> None:
        """See `Body.relabel`."""
        self.body.relabel(block, *labels)

    def items(self) -> list[str | Block]:
        """See `Body.items`."""
        return self.body.items()


class Document(_OnBody):
    """One HCL file: its text, its tree, and the edits made to it in this session.

    Make one with `Document.parse`; edit through its top-level body (`blocks`, `block`,
    `get`, `set`, `add_block`, `setdefault_block`, ... answer on the document itself, as on a
    block) and the `Block` handles it returns; read the result with `text()`.

    .. versionadded:: 0.1.0
    """

    def __init__(self, text: str, parsed: _Parsed, path: str) -> None:
        self.path = path
        self._original = text
        self._text = text
        self._tree, self._blocks, self._parents = parsed.tree, parsed.blocks, parsed.parents
        self._newline = _newline_of(text)
        self._handles: dict[int, Block] = {}
        self.body = Body(self, None)

    @classmethod
    def parse(cls, text: str, path: str = "<config>") -> Document:
        """Parse `text`; nothing is written anywhere.

        :param text: the whole HCL file.
        :param path: the file's name as the user should see it in errors.
        :raises ConfigParseError: the text is not HCL; names path, line and column.
        """
        from lark.exceptions import UnexpectedInput

        try:
            parsed = _parse(text)
        except UnexpectedInput as e:
            line, column = _error_position(e, text)
            raise ConfigParseError(path, line, column, _error_detail(e)) from e
        return cls(text, parsed, path)

    def text(self) -> str:
        """The document's text with every edit applied; the original object if none was."""
        return self._original if self._text == self._original else self._text

    @property
    def changed(self) -> bool:
        """Whether `text()` differs from the parsed text (edits that cancel out do not count)."""
        return self._text != self._original

    @property
    def schema_version(self) -> str | None:
        """The top-level `schema_version` attribute as a string, or None when absent."""
        attribute = self.body._attribute("schema_version")  # noqa: SLF001 - same module
        if attribute is None:
            return None
        value = _decode(attribute.children[2], self._text)
        if isinstance(value, str):
            return value
        start, end = _span(attribute.children[2])
        return self._text[start:end]

    @schema_version.setter
    def schema_version(self, version: str) -> None:
        """Set it in place, or add it at the top, after the file's leading comments."""
        if not isinstance(version, str):
            raise TypeError(f"schema_version must be a string, got {type(version).__name__}")
        self.body._set(name="schema_version", value=version, at_top=True)  # noqa: SLF001

    def __repr__(self) -> str:
        return f"<Document {self.path}{' (changed)' if self.changed else ''}>"

    # -- editing: splice, re-parse, move handles ------------------------------------------

    def _edit(self, splices: list[tuple[int, int, str]], keep: Block | None = None) -> None:
        """Apply `splices` (offsets in the current text) together, then re-parse.

        :param keep: a handle whose first token a splice replaces but that survives (rename).
        :raises ValueError: splices overlap, or the result would not parse; nothing changes.
        """
        from lark.exceptions import UnexpectedInput

        ordered = sorted(splices, key=lambda s: (s[0], s[1]))
        for (_, end, _), (start, _, _) in pairwise(ordered):
            if start < end:
                raise ValueError(f"{self.path}: overlapping edits at offsets {start} and {end}")
        pieces, last = [], 0
        for start, end, replacement in ordered:
            pieces += [self._text[last:start], replacement]
            last = end
        pieces.append(self._text[last:])
        text = "".join(pieces)
        try:
            parsed = _reparse(self._tree, self._blocks, ordered, text)
        except UnexpectedInput as e:
            line, column = _error_position(e, text)
            raise ValueError(
                f"{self.path}: the edit would not parse ({line}:{column}: {_error_detail(e)}); "
                "nothing was changed"
            ) from e
        self._text = text
        self._tree, self._blocks, self._parents = parsed.tree, parsed.blocks, parsed.parents
        handles: dict[int, Block] = {}
        for offset, handle in self._handles.items():
            moved = _moved(offset, ordered, keep=handle is keep)
            handle._offset = moved if moved in self._blocks else None  # noqa: SLF001
            if handle._offset is not None:  # noqa: SLF001
                handles[handle._offset] = handle  # noqa: SLF001
        self._handles = handles

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Edits that stand or fall together, so "nothing was changed" stays true.

        When one is refused, what the ones before it did is put back (e.g. a one-line body
        expanded to take a new line).
        """
        saved = (self._text, self._tree, self._blocks, self._parents, dict(self._handles))
        offsets = {handle: handle._offset for handle in self._handles.values()}  # noqa: SLF001
        try:
            yield
        except ValueError:
            self._text, self._tree, self._blocks, self._parents, self._handles = saved
            for handle, offset in offsets.items():
                handle._offset = offset  # noqa: SLF001
            raise

    def _insert(self, position: int, text: str) -> None:
        """Insert whole lines at `position`, first ending an unterminated last line."""
        if position == len(self._text) and self._text and not self._text.endswith("\n"):
            text = self._newline + text
        self._edit([(position, position, text)])

    # -- the tree, indexed (see `_parse`) ------------------------------------------------------

    def _root_body(self) -> Node:
        body = self._tree.children[0]
        assert not isinstance(body, str)
        return body

    def _handle(self, offset: int) -> Block:
        """The one handle for the block starting at `offset`."""
        if offset not in self._handles:
            self._handles[offset] = Block(self, offset)
        return self._handles[offset]

    def _block_tree(self, block: Block) -> Node:
        if block._offset is None:  # noqa: SLF001
            raise ValueError(f"{self.path}: this block was removed; its handle is stale")
        return self._blocks[block._offset]  # noqa: SLF001

    # -- layout: where new lines go and how they are indented -------------------------------

    def _indent_unit(self, near: int | None) -> str:
        """One level of indentation, copied from the nearest block that nests anything."""
        chain = []
        while near is not None:
            chain.append(near)
            near = self._parents[near]
        for offset in [*chain, *(o for o in self._blocks if o not in chain)]:
            outer = _line_indent(self._text, offset)
            for item in _items(_block_body(self._blocks[offset])):
                inner = _line_indent(self._text, _span(item)[0])
                if outer is not None and inner is not None and len(inner) > len(outer):
                    return inner[len(outer) :]
        return _DEFAULT_INDENT


class Body:
    """The attributes and blocks between a block's braces, or of the whole file.

    .. versionadded:: 0.1.0
    """

    def __init__(self, document: Document, owner: Block | None) -> None:
        self._document = document
        self._owner = owner

    def __repr__(self) -> str:
        return f"<Body of {self._owner!r}>" if self._owner else f"<Body of {self._document.path}>"

    # -- reading ------------------------------------------------------------------------------

    def blocks(self, block_type: str | None = None, /, *labels: str) -> list[Block]:
        """The child blocks of `block_type` (all when None) whose labels start with `labels`."""
        document = self._document
        found = []
        for item in _items(self._tree()):
            if item.data != "block":
                continue
            kind, item_labels = _block_header(item, document._text)  # noqa: SLF001
            if block_type is not None and kind != block_type:
                continue
            if item_labels[: len(labels)] == labels:
                found.append(document._handle(_span(item)[0]))  # noqa: SLF001
        return found

    def block(self, block_type: str, /, *labels: str) -> Block | None:
        """The one child block matching `block_type` and the label prefix, or None.

        :raises ValueError: several blocks match; say which with more labels, or use `blocks`.
        """
        found = self.blocks(block_type, *labels)
        if len(found) > 1:
            shown = " ".join([block_type, *(f'"{label}"' for label in labels)])
            raise ValueError(f"{self._document.path}: {len(found)} blocks match {shown}")
        return found[0] if found else None

    @property
    def attributes(self) -> dict[str, Value]:
        """Every attribute's value, in the file's order."""
        text = self._document._text  # noqa: SLF001
        return {
            _name(item): _decode(item.children[2], text)
            for item in _items(self._tree())
            if item.data == "attribute"
        }

    def get(self, name: str, default: Value = None) -> Value:
        """The attribute's value as Python (a string keeps its `${...}` text), else `default`."""
        attribute = self._attribute(name)
        if attribute is None:
            return default
        return _decode(attribute.children[2], self._document._text)  # noqa: SLF001

    def has(self, name: str) -> bool:
        """Whether the attribute is present (even when its value is null)."""
        return self._attribute(name) is not None

    def attribute_line(self, name: str) -> int | None:
        """The 1-based line the attribute starts on, for messages; None when it is absent."""
        attribute = self._attribute(name)
        if attribute is None:
            return None
        return self._document._text.count("\n", 0, _span(attribute)[0]) + 1  # noqa: SLF001

    def items(self) -> list[str | Block]:
        """Attribute names and child blocks, in the file's order.

        .. versionadded:: 0.1.0
        """
        document = self._document
        return [
            _name(item) if item.data == "attribute" else document._handle(_span(item)[0])  # noqa: SLF001
            for item in _items(self._tree())
        ]

    def source(self, name: str) -> str | None:
        """The attribute's value exactly as written, or None when the attribute is absent.

        Copying a value by its source keeps its spelling, which `get` then `set` would not:
        a heredoc stays a heredoc, a reference a reference. Write it elsewhere with
        `set(name, Expression(source))`. A heredoc's source ends at its closing marker.

        .. versionadded:: 0.1.0
        """
        attribute = self._attribute(name)
        if attribute is None:
            return None
        start, end = _span(attribute.children[2])
        return self._document._text[start:end].rstrip("\r\n")  # noqa: SLF001

    # -- editing ------------------------------------------------------------------------------

    def set(self, name: str, value: Value, *, first: bool = False) -> None:
        """Replace the value's bytes in place, or add `name = value` after the last attribute.

        Setting an equal value (same Python type) changes nothing, so the original spelling
        of a list or a number survives a migration that merely asserts it.

        :param first: a new attribute goes at the top of the body, below the `{` line (what
            the block is about, such as `interface = "*"`, reads first); an existing one is
            changed in place either way.
        :raises ValueError: `name` is not an HCL identifier, or the value cannot be written.
        :raises TypeError: the value is of a type HCL has no literal for.
        """
        self._set(name, value, at_top=first)

    def delete(self, name: str) -> bool:
        """Remove the attribute's line, with its inline comment; False when it is absent."""
        attribute = self._attribute(name)
        if attribute is None:
            return False
        start, end = _span(attribute)
        start, end = _item_removal(self._document._text, start, end)  # noqa: SLF001
        self._document._edit([(start, end, "")])  # noqa: SLF001
        return True

    def rename(self, name: str, new_name: str) -> bool:
        """Rename the attribute where it stands: only its name's bytes change.

        Its value, inline comment and position are kept, and padding that aligns its `=`
        with its neighbours' is resized to keep the column, so renaming back gives the
        bytes as they were. Returns False when the attribute is absent.

        :raises ValueError: `new_name` is not an HCL identifier, or is already set here
            (HCL allows an attribute once per body).
        """
        _check_name(new_name)
        attribute = self._attribute(name)
        if attribute is None or new_name == name:
            return attribute is not None
        if self.has(new_name):
            raise ValueError(f"{self._document.path}: {new_name} is already set in {self!r}")
        start, end = _span(attribute.children[0])
        splices = [(start, end, new_name)]
        equals = _span(attribute.children[1])[1] - 1  # the EQ token holds the spaces before it
        padding = self._document._text[end:equals]  # noqa: SLF001
        if len(padding) > 1 and not padding.strip(" "):  # aligned: keep the `=` column
            width = max(1, len(padding) - (len(new_name) - len(name)))
            splices.append((end, equals, " " * width))
        self._document._edit(splices)  # noqa: SLF001
        return True

    def add_block(self, block_type: str, /, *labels: str, **attributes: Value) -> Block:
        """Append a block at the end of this body, after a blank line, one attribute a line.

        :raises ValueError: `block_type` or an attribute name is not an HCL identifier.
        """
        _check_name(block_type)
        for name in attributes:
            _check_name(name)
        document = self._document
        self._expand_if_one_line()
        text = document._text  # noqa: SLF001
        position = self._end_position()
        indent = self._child_indent()
        unit = document._indent_unit(self._owner_offset())  # noqa: SLF001
        newline = document._newline  # noqa: SLF001
        rendered = _render_block(block_type, labels, attributes, indent, unit, newline)
        lead = newline if _items(self._tree()) else ""
        if position == len(text) and text and not text.endswith("\n"):
            lead = newline + lead
        document._edit([(position, position, lead + rendered + newline)])  # noqa: SLF001
        offset = position + len(lead) + len(indent)
        assert offset in document._blocks, "the new block starts where it was put"  # noqa: SLF001
        return document._handle(offset)  # noqa: SLF001

    def setdefault_block(self, block_type: str, /, *labels: str, **attributes: Value) -> Block:
        """The child block with exactly this type and these labels; added when missing.

        An existing block is returned as it is: `attributes` apply only to a new one.
        """
        exact = [b for b in self.blocks(block_type, *labels) if b.labels == labels]
        if len(exact) > 1:
            raise ValueError(f"{self._document.path}: {len(exact)} {block_type} blocks match")
        return exact[0] if exact else self.add_block(block_type, *labels, **attributes)

    def remove_block(self, block: Block) -> None:
        """Remove the block's lines and one blank line next to them, so no gap doubles.

        :raises ValueError: the block is not a child of this body, or was already removed.
        """
        document = self._document
        self._check_child(block)
        text = document._text  # noqa: SLF001
        start, end = _item_removal(text, *_span(document._block_tree(block)))  # noqa: SLF001
        start, end = _with_one_blank_line(text, start, end)
        document._edit([(start, end, "")])  # noqa: SLF001

    def move(self, item: str | Block, into: Body) -> None:
        """Move an attribute (by name) or a child block, as written, to the end of `into`.

        The item's text travels verbatim: its inline comment, the comment lines right above
        it (they describe it), and for a block everything inside. Only the indentation
        changes, to `into`'s; a heredoc's lines keep theirs, since they are its value. A
        block, or an attribute that follows a block, gets a blank line before it. So a
        migration that regroups settings (`dns_server` into `dns { serve "*" { } }`) leaves
        each line as the operator wrote it.

        .. versionadded:: 0.1.0

        :raises ValueError: the attribute is absent, the block is not a child of this body,
            or `into` is this body or lies inside the moved block.
        """
        document = self._document
        if isinstance(item, Block):
            self._check_child(item)
        elif self._attribute(item) is None:
            raise ValueError(f"{document.path}: no attribute {item!r} in {self!r}")
        if into._owner_offset() == self._owner_offset() or (
            isinstance(item, Block) and into._inside(item)
        ):
            raise ValueError(f"{document.path}: cannot move {item!r} into {into!r}")
        lines = self._item_lines(item)
        into._append_lines(lines, block=isinstance(item, Block))
        start, end = self._cut(self._item_node(item))  # the item's handle then goes stale
        start, end = _without_doubled_gap(document._text, start, end)  # noqa: SLF001
        document._edit([(start, end, "")])  # noqa: SLF001

    def rename_block(self, block: Block, new_type: str, /, *new_labels: str) -> None:
        """Rewrite the block's type and labels, splicing only the tokens that change.

        Given no labels, the block keeps its own: renaming a type is the common migration.
        With as many labels as before, each label keeps its quoting and the spaces between
        them stay; otherwise the whole header before the `{` is rewritten.

        :raises ValueError: the block is not a child of this body, or `new_type` is not an
            HCL identifier.
        """
        self._rewrite_header(block, new_type, new_labels or block.labels)

    def relabel(self, block: Block, /, *labels: str) -> None:
        """Give the block exactly these labels, none to make it unlabelled; its type stays.

        .. versionadded:: 0.1.0

        :raises ValueError: the block is not a child of this body.
        """
        self._rewrite_header(block, block.type, labels)

    def _rewrite_header(self, block: Block, new_type: str, new_labels: tuple[str, ...]) -> None:
        _check_name(new_type)
        document = self._document
        self._check_child(block)
        tree = document._block_tree(block)  # noqa: SLF001
        parts = _header_parts(tree)
        text = document._text  # noqa: SLF001
        old = [text[slice(*_span(part))] for part in parts]
        if len(new_labels) == len(old) - 1:
            new = [new_type, *map(_render_label, new_labels, old[1:])]
            splices = [
                (*_span(part), replacement)
                for part, before, replacement in zip(parts, old, new, strict=True)
                if before != replacement
            ]
        else:
            header = [new_type, *(_render_label(label, None) for label in new_labels)]
            splices = [(_span(parts[0])[0], _span(parts[-1])[1], " ".join(header))]
        if splices:
            document._edit(splices, keep=block)  # noqa: SLF001

    # -- internals ------------------------------------------------------------------------------

    def _tree(self) -> Node:
        if self._owner is None:
            return self._document._root_body()  # noqa: SLF001
        return _block_body(self._document._block_tree(self._owner))  # noqa: SLF001

    def _owner_offset(self) -> int | None:
        if self._owner is None:
            return None
        self._document._block_tree(self._owner)  # noqa: SLF001 - refuse a stale handle
        return self._owner._offset  # noqa: SLF001

    def _attribute(self, name: str) -> Node | None:
        for item in _items(self._tree()):
            if item.data == "attribute" and _name(item) == name:
                return item
        return None

    def _item_node(self, item: str | Block) -> Node:
        if isinstance(item, Block):
            return self._document._block_tree(item)  # noqa: SLF001
        attribute = self._attribute(item)
        assert attribute is not None, "checked by the caller"
        return attribute

    def _cut(self, node: Node) -> tuple[int, int]:
        """What moving `node` takes: its lines and the comment lines right above them."""
        text = self._document._text  # noqa: SLF001
        start, end = _item_removal(text, *_span(node))
        if start != _line_start(text, start):  # not on lines of its own: just the item
            return start, end
        while start > 0:
            above = _line_start(text, start - 1)
            if not text[above:start].strip().startswith(("#", "//")):
                break
            start = above
        return start, end

    def _item_lines(self, item: str | Block) -> list[tuple[str, bool]]:
        """The item's lines without their common indentation, each with whether it is literal.

        A line inside a heredoc is literal: its indentation is part of the value.
        """
        text = self._document._text  # noqa: SLF001
        node = self._item_node(item)
        start, end = self._cut(node)
        heredocs = [
            (token.start_pos or 0, token.end_pos or 0)
            for token in _tokens(node)
            if token.type.startswith("HEREDOC")
        ]
        indent = _leading_whitespace(text, start)
        lines, position = [], start
        for line in text[start:end].splitlines(keepends=True):
            literal = any(low < position < high for low, high in heredocs)
            position += len(line)
            if not line.endswith("\n"):  # an item sharing its line: `{ a = 1 }`
                line = line.rstrip() + self._document._newline  # noqa: PLW2901, SLF001
            if not literal and line.startswith(indent):
                line = line[len(indent) :]  # noqa: PLW2901
            lines.append((line, literal))
        return lines

    def _inside(self, block: Block) -> bool:
        """Whether this body belongs to `block` or to a block nested in it."""
        offset = self._owner_offset()
        while offset is not None:
            if offset == block._offset:  # noqa: SLF001
                return True
            offset = self._document._parents[offset]  # noqa: SLF001
        return False

    def _append_lines(self, lines: list[tuple[str, bool]], *, block: bool) -> None:
        """Append dedented `lines` at the end of this body, indented like its items."""
        with self._document._all_or_nothing():  # noqa: SLF001
            self._append_lines_now(lines, block=block)

    def _append_lines_now(self, lines: list[tuple[str, bool]], *, block: bool) -> None:
        document = self._document
        self._expand_if_one_line()
        text = document._text  # noqa: SLF001
        items = _items(self._tree())
        position = self._end_position()
        indent = self._child_indent()
        newline = document._newline  # noqa: SLF001
        gap = bool(items) and (block or items[-1].data == "block")
        lead = newline if gap else ""
        if position == len(text) and text and not text.endswith("\n"):
            lead = newline + lead
        body = "".join(
            line if literal or not line.strip() else indent + line for line, literal in lines
        )
        document._edit([(position, position, lead + body)])  # noqa: SLF001

    def _check_child(self, block: Block) -> None:
        """Refuse a stale handle, or one on a block that lives elsewhere."""
        document = self._document
        if block._document is document:  # noqa: SLF001
            document._block_tree(block)  # noqa: SLF001 - raises if stale
            if document._parents[block._offset or 0] == self._owner_offset():  # noqa: SLF001
                return
        raise ValueError(f"{document.path}: {block!r} is not a child of {self!r}")

    def _set(self, name: str, value: Value, *, at_top: bool) -> None:
        _check_name(name)
        rendered = _render(value)
        document = self._document
        text = document._text  # noqa: SLF001
        attribute = self._attribute(name)
        if attribute is not None:
            node = attribute.children[2]
            if _same(_decode(node, text), value):
                return
            start, end = _span(node)
            end -= len(text[start:end]) - len(text[start:end].rstrip("\r\n"))  # heredoc
            document._edit([(start, end, rendered)])  # noqa: SLF001
            return
        with document._all_or_nothing():  # noqa: SLF001
            self._expand_if_one_line()
            position, indent, gap = self._attribute_position(at_top=at_top)
            newline = document._newline  # noqa: SLF001
            document._insert(position, f"{indent}{name} = {rendered}{newline}{gap}")  # noqa: SLF001
        assert self.has(name), "the new line is code, not inside a comment"

    def _attribute_position(self, *, at_top: bool) -> tuple[int, str, str]:
        """Where a new attribute line goes, its indentation, and a blank line to follow it.

        After the last attribute; else at the top of the body: below the `{` line, or for the
        file, below its leading comments (a file header stays the first thing in the file).
        """
        document = self._document
        text = document._text  # noqa: SLF001
        items = _items(self._tree())
        attributes = [item for item in items if item.data == "attribute"]
        if attributes and not at_top:
            start, end = _span(attributes[-1])
            _, line_end = _rest_of_line(text, end)
            assert line_end is not None, "one-line bodies are expanded first"
            indent = _line_indent(text, start)
            return line_end, self._child_indent() if indent is None else indent, ""
        following: Node | None
        if self._owner is None:
            if not items:
                return len(text), "", ""
            first = _span(items[0])[0]
            indent = _line_indent(text, first)
            position = first if indent is None else first - len(indent)
            following = items[0]
        else:
            lbrace = _brace(self._document._block_tree(self._owner), "LBRACE")  # noqa: SLF001
            _, line_end = _rest_of_line(text, lbrace.end_pos or 0)
            assert line_end is not None, "one-line bodies are expanded first"
            position = line_end
            following = items[0] if items else None
        blank_follows = not text[position : text.find("\n", position) + 1].strip()
        gap = document._newline  # noqa: SLF001
        if following is None or following.data != "block" or blank_follows:
            gap = ""
        return position, self._child_indent(), gap

    def _end_position(self) -> int:
        """Where a block appended to this body goes: before `}` and any blank lines above it."""
        text = self._document._text  # noqa: SLF001
        if self._owner is None:
            floor, position = 0, len(text)
        else:
            tree = self._document._block_tree(self._owner)  # noqa: SLF001
            floor = _brace(tree, "LBRACE").end_pos or 0
            position = _line_start(text, _brace(tree, "RBRACE").start_pos or 0)
        while position > floor:
            before = _line_start(text, position - 1)
            if before <= floor or text[before:position].strip():
                break
            position = before
        return position

    def _child_indent(self) -> str:
        """The indentation of this body's items: a sibling's, else the parent's plus one level."""
        text = self._document._text  # noqa: SLF001
        for item in _items(self._tree()):
            indent = _line_indent(text, _span(item)[0])
            if indent is not None:
                return indent
        offset = self._owner_offset()
        if offset is None:
            return ""
        unit = self._document._indent_unit(offset)  # noqa: SLF001
        return _leading_whitespace(text, offset) + unit

    def _expand_if_one_line(self) -> None:
        """Put a one-line body (`{ a = 1 }`, `{}`) on lines of its own so lines can be added."""
        if self._owner is None:
            return
        document = self._document
        text = document._text  # noqa: SLF001
        tree = document._block_tree(self._owner)  # noqa: SLF001
        lbrace, rbrace = _brace(tree, "LBRACE"), _brace(tree, "RBRACE")
        start, end = lbrace.end_pos or 0, rbrace.start_pos or 0
        if _rest_of_line(text, start)[1] is not None and _line_indent(text, end) is not None:
            return
        newline = document._newline  # noqa: SLF001
        inner = text[start:end].strip()
        indent = self._child_indent()
        body = f"{newline}{indent}{inner}" if inner else ""
        closing = newline + _leading_whitespace(text, self._owner_offset() or 0)
        document._edit([(start, end, body + closing)])  # noqa: SLF001


class Block(_OnBody):
    """A handle on one block; it follows the block through edits until the block is removed.

    `get`, `set`, `delete`, `rename`, `has`, `attributes`, `blocks`, `block`, `add_block`,
    `setdefault_block`, `remove_block` and `rename_block` act on the block's body.

    .. versionadded:: 0.1.0
    """

    def __init__(self, document: Document, offset: int) -> None:
        self._document = document
        self._offset: int | None = offset

    def __repr__(self) -> str:
        if self._offset is None:
            return "<Block (removed)>"
        return "<Block " + " ".join([self.type, *(f'"{label}"' for label in self.labels)]) + ">"

    @property
    def type(self) -> str:
        """The block's type, such as `zone`."""
        return _block_header(self._document._block_tree(self), self._document._text)[0]  # noqa: SLF001

    @property
    def labels(self) -> tuple[str, ...]:
        """The block's labels, such as `("lan",)`, unquoted."""
        return _block_header(self._document._block_tree(self), self._document._text)[1]  # noqa: SLF001

    @property
    def line(self) -> int:
        """The 1-based line the block starts on, for messages."""
        self._document._block_tree(self)  # noqa: SLF001 - refuse a stale handle
        return self._document._text.count("\n", 0, self._offset) + 1  # noqa: SLF001

    @property
    def body(self) -> Body:  # type: ignore[override]  # a Document keeps its body, a Block finds it
        """What is between the braces."""
        return Body(self._document, self)


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    """A text's tree, with each block's offset mapped to its tree and its parent's offset.

    A parent's offset is None at the top level. Shared by every document of the same text,
    so nothing may change it: a document replaces its own on each edit, never edits it.
    """

    tree: Node
    blocks: Mapping[int, Node]
    parents: Mapping[int, int | None]


_RECENT: OrderedDict[str, _Parsed] = OrderedDict()
"""The last texts parsed (see `_parse`), oldest first."""
_RECENT_SIZE = 8
_RECENT_CHARS = 64_000
"""At most this much text remembered (its trees take ~150 times as much: ~10 MB), so a
long-lived process (`serve`) that migrated a large config does not keep 8 of its trees."""
_RECENT_LOCK = threading.Lock()


def _parse(text: str) -> _Parsed:
    """Parse and index `text`, remembering the last texts parsed.

    Why remember: lark parses ~20 ms a 2 KB file in pure Python, and the same texts come
    back in one run: validation reads what a step's last edit wrote, a rollback returns to
    texts the run parsed on the way up. Only a few (`_RECENT_SIZE`, `_RECENT_CHARS`): a tree
    takes ~150 times its text in memory. A failed parse is not remembered; it raises again.
    """
    found = _recent(text) or _indexed(_parse_tree(text))
    _remember(text, found)
    return found


def _recent(text: str) -> _Parsed | None:
    with _RECENT_LOCK:
        return _RECENT.get(text)


def _remember(text: str, parsed: _Parsed) -> None:
    with _RECENT_LOCK:
        _RECENT[text] = parsed
        _RECENT.move_to_end(text)
        while len(_RECENT) > 1 and (
            len(_RECENT) > _RECENT_SIZE or sum(map(len, _RECENT)) > _RECENT_CHARS
        ):
            _RECENT.popitem(last=False)


def _indexed(tree: Node) -> _Parsed:
    blocks: dict[int, Node] = {}
    parents: dict[int, int | None] = {}

    def walk(body: Node, parent: int | None) -> None:
        for item in _items(body):
            if item.data == "block":
                offset = _span(item)[0]
                blocks[offset] = item
                parents[offset] = parent
                walk(_block_body(item), offset)

    root = tree.children[0]
    assert not isinstance(root, str)
    walk(root, None)
    return _Parsed(tree, blocks, parents)


def _reparse(
    tree: Node, blocks: Mapping[int, Node], splices: list[tuple[int, int, str]], text: str
) -> _Parsed:
    """The parse of `text`, which is the text of `tree` with `splices` (ordered) applied.

    Why not always parse it whole: every edit re-parses, and a migration makes dozens, so
    on a large `flywall.hcl` most of a config migration's time went to lark. When every
    splice falls inside one block's braces, only that block's new text is parsed, alone
    (it is a valid file by itself), and grafted into a copy of the tree: the tokens after
    it move by the length the splices added. The graft is taken only if that text parses
    as exactly one block, from its first byte to its closing brace; anything else (a
    splice that opens a string, a comment or another block) gets the whole parse, which
    also words any error. Grafted trees carry offsets (`start_pos`, `end_pos`), which is
    all this module reads; line and column are left unset on the tokens they moved.
    """
    block = None if _recent(text) else _innermost_block(blocks, splices)
    grafted = None if block is None else _grafted(tree, block, splices, text)
    if grafted is None:
        return _parse(text)
    _remember(text, grafted)
    return grafted


def _innermost_block(
    blocks: Mapping[int, Node], splices: list[tuple[int, int, str]]
) -> Node | None:
    """The innermost block whose body (between its braces) holds every splice."""
    low, high = splices[0][0], max(end for _, end, _ in splices)
    found: Node | None = None
    for offset in sorted(blocks):
        block = blocks[offset]
        opened = _brace(block, "LBRACE").end_pos or 0
        if opened <= low and high <= (_brace(block, "RBRACE").start_pos or 0):
            found = block  # a later start inside it is a block nested in it
        elif offset > high:
            break
    return found


def _grafted(
    tree: Node, block: Node, splices: list[tuple[int, int, str]], text: str
) -> _Parsed | None:
    from lark import Token, Tree
    from lark.exceptions import UnexpectedInput

    start, end = _span(block)
    growth = sum(len(replacement) - (stop - at) for at, stop, replacement in splices)
    fragment = text[start : end + growth]
    try:
        alone = _parse_tree(fragment)
    except UnexpectedInput:
        return None
    items = _items(alone.children[0])  # type: ignore[arg-type]
    if len(items) != 1 or items[0].data != "block" or _span(items[0])[0] != 0:
        return None
    if _brace(items[0], "RBRACE").end_pos != len(fragment):  # its own brace, at the end
        return None
    for token in _tokens(items[0]):  # a fresh tree: its tokens are ours to move
        token.start_pos = (token.start_pos or 0) + start
        token.end_pos = (token.end_pos or 0) + start
        token.line = token.column = token.end_line = token.end_column = None

    def moved(token: Token) -> Token:
        if (token.start_pos or 0) < end:
            return token
        return Token(
            token.type,
            token.value,
            start_pos=(token.start_pos or 0) + growth,
            end_pos=(token.end_pos or 0) + growth,
        )

    def copy(node: Node) -> Node:
        if node is block:
            return items[0]
        children = [
            c if c is None else moved(c) if isinstance(c, Token) else copy(c) for c in node.children
        ]
        if all(new is old for new, old in zip(children, node.children, strict=True)):
            return node
        return Tree(node.data, children)

    return _indexed(copy(tree))


def _parse_tree(text: str) -> Node:
    """The raw Lark tree; imported lazily because loading the grammar slows CLI start-up."""
    import hcl2

    return hcl2.parses_to_tree(text)


def _error_position(error: Exception, text: str) -> tuple[int, int]:
    """Lark's line and column; at the end of input it may have none, so point at the end."""
    line, column = getattr(error, "line", -1), getattr(error, "column", -1)
    if isinstance(line, int) and line > 0 and isinstance(column, int) and column > 0:
        return line, column
    return text.count("\n") + 1, len(text) - _line_start(text, len(text)) + 1


def _error_detail(error: Exception) -> str:
    """Say briefly what was found; lark's own message lists every token it expected."""
    token = getattr(error, "token", None)
    if token is not None:
        if token.type == "$END":
            return "unexpected end of file (is a brace or quote left open?)"
        words = str(token).split()
        if not words or str(token)[0] in "\r\n":
            return "unexpected end of line"
        return f"unexpected {words[0][:20]!r}"
    char = getattr(error, "char", None)
    return f"unexpected character {char!r}" if char else "syntax error"


# -- reading the tree ------------------------------------------------------------------------


def _tokens(node: Node | Token) -> Iterator[Token]:
    if isinstance(node, str):
        yield node
        return
    for child in node.children:
        if child is not None:
            yield from _tokens(child)


def _span(node: Node | Token) -> tuple[int, int]:
    """The node's offsets without trailing newlines and comments, which some rules swallow.

    A binary expression's rule ends in an optional newline-or-comment, so `x = a || b # c`
    gives the value a span that includes the comment and the line break.
    """
    tokens = [t for t in _tokens(node) if t.type != "NL_OR_COMMENT"]
    return tokens[0].start_pos or 0, tokens[-1].end_pos or 0


def _items(body: Node) -> list[Node]:
    return [c for c in body.children if not isinstance(c, str) and c.data in _ITEMS]


def _name(item: Node) -> str:
    """An attribute's name or a block's type (the first child, a one-token rule)."""
    head = item.children[0]
    return str(next(_tokens(head)))


def _block_body(block: Node) -> Node:
    return next(c for c in block.children if not isinstance(c, str) and c.data == "body")


def _brace(block: Node, kind: str) -> Token:
    return next(c for c in block.children if isinstance(c, str) and c.type == kind)


def _header_parts(block: Node) -> list[Node]:
    """The block's type node and label nodes, before any newline and the `{`."""
    parts = []
    for child in block.children:
        if isinstance(child, str) or child.data in {"new_line_or_comment", "body"}:
            break
        parts.append(child)
    return parts


def _block_header(block: Node, text: str) -> tuple[str, tuple[str, ...]]:
    parts = _header_parts(block)
    labels = tuple(
        _decode_string(part, text) if part.data == "string" else str(next(_tokens(part)))
        for part in parts[1:]
    )
    return _name(block), labels


def _decode(node: Node | Token, text: str) -> Value:  # noqa: C901, PLR0911 - one case per rule
    """The Python value of an expression; anything that is not a literal is an `Expression`."""
    if isinstance(node, str):
        return Expression(str(node))
    children = [c for c in node.children if isinstance(c, str) or c.data != "new_line_or_comment"]
    rule = node.data
    if rule == "expr_term" and len(children) == 1:
        return _decode(children[0], text)
    if rule == "string":
        return _decode_string(node, text)
    if rule == "int_lit":
        return int(str(children[0]))
    if rule == "float_lit":
        return float(str(children[0]))
    if rule == "literal_value":
        return {"true": True, "false": False, "null": None}[str(children[0])]
    if rule == "unary_op" and str(children[0]) == "-":
        number = _decode(children[1], text)
        if isinstance(number, int | float) and not isinstance(number, bool):
            return -number
    if rule == "tuple":
        return [_decode(c, text) for c in children if not isinstance(c, str)]
    if rule == "object":
        return dict(_decode_element(c, text) for c in children if not isinstance(c, str))
    if rule in {"heredoc_template", "heredoc_template_trim"}:
        return _decode_heredoc(str(children[0]))
    start, end = _span(node)
    return Expression(text[start:end])


def _decode_element(element: Node, text: str) -> tuple[str, Value]:
    key_node, value_node = element.children[0], element.children[2]
    key = _decode(key_node.children[0], text) if not isinstance(key_node, str) else key_node
    if isinstance(key, Expression):  # a bare identifier key is a name, not a reference
        key = key.text
    return str(key), _decode(value_node, text)


def _decode_string(node: Node, text: str) -> str:
    """Unescape literal parts; keep `${...}`, `%{...}` and `$${` exactly as written."""
    parts = []
    for part in node.children:
        if isinstance(part, str):  # the quotes
            continue
        inner = part.children[0]
        if isinstance(inner, str) and inner.type == "STRING_CHARS":
            parts.append(_unescape(str(inner)))
        else:
            start, end = _span(part)
            parts.append(text[start:end])
    return "".join(parts)


def _unescape(chars: str) -> str:
    def one(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape[0] in "uU":
            return chr(int(escape[1:], 16))
        return _ESCAPES.get(escape, "\\" + escape)

    return re.sub(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", one, chars)


def _decode_heredoc(token: str) -> str:
    """The heredoc's lines up to the closing marker; `<<-` removes their common indentation."""
    head = _HEREDOC_HEAD.match(token)
    assert head is not None
    body = token[head.end() :]
    body = body[: body.rstrip().rfind("\n") + 1]  # drop the closing marker's line
    return textwrap.dedent(body) if head.group(1) else body


def _same(old: Value, new: Value) -> bool:
    """Equal values of the same types (True is not 1, 1 is not 1.0): then a set is a no-op."""
    if type(old) is not type(new):
        return False
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(map(_same, old, new))
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() == new.keys() and all(_same(old[k], new[k]) for k in old)
    return old == new


# -- rendering -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not an HCL identifier: {name!r}")


def _render(value: Value) -> str:  # noqa: PLR0911 - one case per type
    """One-line HCL for a Python value; bool before int because True is an int."""
    if isinstance(value, Expression):
        return value.text
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _render_number(value)
    if isinstance(value, str):
        return _render_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_render_key(k)} = {_render(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"HCL has no literal for a {type(value).__name__}: {value!r}")


def _render_number(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"HCL has no literal for {value!r}")
    return repr(value)


def _render_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"object keys must be strings, got {key!r}")
    return key if _NAME.fullmatch(key) else _render_string(key)


def _render_string(value: str) -> str:
    """Quote and escape, but copy `${...}` and `%{...}` verbatim: they are HCL, not text."""
    out, i = ['"'], 0
    while i < len(value):
        if value.startswith(("${", "%{"), i) and (end := _template_end(value, i + 2)) > 0:
            out.append(value[i:end])
            i = end
            continue
        out.append(_QUOTE_ESCAPES.get(value[i], value[i]))
        i += 1
    out.append('"')
    return "".join(out)


def _template_end(value: str, i: int) -> int:
    """The offset after the `}` closing a template opened before `i`, or -1 if unclosed."""
    depth, quoted = 1, False
    while i < len(value):
        char = value[i]
        if quoted and char == "\\":
            i += 1
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "{":
            depth += 1
        elif not quoted and char == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _render_label(label: str, old_style: str | None) -> str:
    """Quoted, unless it replaces a bare label and can stay bare."""
    if not isinstance(label, str):
        raise TypeError(f"block labels are strings, got {label!r}")
    bare = old_style is not None and not old_style.startswith('"')
    return label if bare and _NAME.fullmatch(label) else _render_string(label)


def _render_block(
    block_type: str,
    labels: tuple[str, ...],
    attributes: Mapping[str, Value],
    indent: str,
    unit: str,
    newline: str,
) -> str:
    head = " ".join([block_type, *(_render_label(label, None) for label in labels)])
    if not attributes:
        return f"{indent}{head} {{}}"
    lines = [f"{indent}{unit}{name} = {_render(value)}" for name, value in attributes.items()]
    return newline.join([f"{indent}{head} {{", *lines, f"{indent}}}"])


# -- text layout -----------------------------------------------------------------------------


def _newline_of(text: str) -> str:
    """The file's line ending, from its first line; new lines copy it."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def _line_start(text: str, position: int) -> int:
    return text.rfind("\n", 0, position) + 1


def _line_indent(text: str, position: int) -> str | None:
    """The whitespace before `position` on its line, or None if anything else precedes it."""
    prefix = text[_line_start(text, position) : position]
    return prefix if not prefix.strip(" \t") else None


def _leading_whitespace(text: str, position: int) -> str:
    line = text[_line_start(text, position) :]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _rest_of_line(text: str, position: int) -> tuple[int, int | None]:
    """Skip comments after `position` to the line's end: (end of content, start of next line).

    The second item is None when more code follows on the same line (a one-line body).
    A block comment that starts on the line belongs to it, even if it runs over several.
    """
    if position > 0 and text[position - 1] == "\n":  # a heredoc's token owns its newline
        return position - 1 - (text[position - 2 : position - 1] == "\r"), position
    i = position
    while i < len(text):
        if text[i] == "\n":
            return i - (text[i - 1] == "\r"), i + 1
        if text[i] in " \t\r":
            i += 1
        elif text[i] == "#" or text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                return len(text), len(text)
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = len(text) if close < 0 else close + 2
        else:
            return i, None
    return len(text), len(text)


def _item_removal(text: str, start: int, end: int) -> tuple[int, int]:
    """What to cut to remove an attribute or block: its whole line when it has one."""
    content_end, line_end = _rest_of_line(text, end)
    if _line_indent(text, start) is not None and line_end is not None:
        return _line_start(text, start), line_end
    if line_end is not None:  # something precedes it on the line: keep that line break
        while start > 0 and text[start - 1] in " \t":
            start -= 1
    return start, content_end


def _with_one_blank_line(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen whole lines being removed by the blank line above them, else the one below.

    So removing a block between two blank-line gaps leaves one gap, not two.
    """
    if start == _line_start(text, start) and end > 0 and text[end - 1] == "\n":
        before = _line_start(text, start - 1) if start else start
        after = text.find("\n", end)
        if start and not text[before:start].strip():
            start = before
        elif after >= 0 and not text[end:after].strip():
            end = after + 1
    return start, end


def _without_doubled_gap(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen whole lines being removed by a blank line that would otherwise be left doubled.

    That is a blank line that, once they are gone, would sit next to another blank line or
    hug a brace; a single gap between the items around them stays.
    """
    if start != _line_start(text, start) or text[end - 1 : end] != "\n":
        return start, end
    above = _line_start(text, start - 1) if start else start
    below = text.find("\n", end) + 1 or len(text)
    previous, following = text[above:start].strip(), text[end:below].strip()
    if start and not previous and (not following or following.startswith("}")):
        return above, end
    if end < len(text) and not following and (not previous or previous.endswith("{")):
        return start, below
    return start, end


def _moved(offset: int, splices: list[tuple[int, int, str]], *, keep: bool) -> int | None:
    """Where a block's first offset lands after `splices`; None when its bytes were removed."""
    delta = 0
    for start, end, replacement in splices:
        if start > offset:
            break
        if end <= offset:
            delta += len(replacement) - (end - start)
        elif not (keep and start == offset):
            return None
    return offset + delta
