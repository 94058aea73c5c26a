"""A strict reader for plain HCL files: literal values and blocks, nothing else.

Why it exists: python-hcl2 is THE parser of flywall.hcl, but on a cold start it costs ~80 ms
and ~23 MiB (importing Lark and building its LALR parser) to read a three-line `migration { }`
block, and a fresh appliance, a just-edited file or one a config migration just rewrote always
starts cold. Almost every real config is plain data: blocks whose attributes are strings,
numbers, bools, lists and objects. This module reads exactly that subset, in under a
millisecond, rather than a second HCL parser: it knows only that subset and gives up on the rest.

The promise, tested as a property against python-hcl2 itself: `read_plain` either returns
None ("not mine, ask hcl2") or returns exactly what `hcl2.loads` would return for the
`migration` entry, with the same `__is_block__` markers. It never reports an error of its own:
anything it does not fully understand, including every syntax error, is declined, so hcl2
keeps the one voice for parse errors (with line and column) and for every construct beyond
the subset: templates inside `migration { }` (outside it, a plain "${name.attr}" reference
is accepted, since there only validity matters), `%{}` directives, heredocs, references,
operators, function calls, exponents, CRLF line endings, unusual escapes, keyword-named keys,
labelled blocks inside `migration { }`, repeated attributes, and a block and an attribute
sharing a name (hcl2 raises or lets the last win, depending on order). It is stricter than
hcl2 in places on purpose (an item must end its line; separators between object elements),
which only sends more files to hcl2. Comments of all three kinds are understood.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["read_plain"]

_SPACE = re.compile(r"[ \t]*")
# hcl2's NL_OR_COMMENT: a line break, a `#` or `//` comment with its line break, or a whole
# `/* */` comment, which hcl2 also takes as a line break (so `a = 1 /* */ b = 2` is two items).
_LINE_BREAK = re.compile(r"#[^\n]*\n|//[^\n]*\n|/\*.*?\*/|\n", re.DOTALL)
# Any run of those with the blanks around them.
_GAP = re.compile(r"(?:[ \t]*(?:#[^\n]*\n|//[^\n]*\n|/\*.*?\*/|\n))*[ \t]*", re.DOTALL)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# A quoted string without templates, line breaks or escapes other than hcl2's known ones.
_STRING = re.compile(
    r'"((?:[^"\\\n\r$%]|\$(?!\{)|%(?!\{)|\\[nrt"\\]|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8})*)"'
)
# Outside `migration { }` only validity matters, so there a string value may also hold a
# simple reference such as "${LOCAL_DOMAIN}" or "${var.name}", which hcl2 always accepts.
_TEMPLATED = re.compile(
    r'"((?:[^"\\\n\r$%]|\$(?!\{)|%(?!\{)|\\[nrt"\\]|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}'
    r"|\$\{[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\})*)\""
)
_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.]*)\}")
_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
# Names hcl2 lexes as keywords or literals, whose use as a key or label it treats specially.
_RESERVED = frozenset(
    ("true", "false", "null", "in", "for", "if", "for_each", "else", "endif", "endfor")
)
_LITERALS = {"true": True, "false": False, "null": None}


class _Decline(Exception):
    """Raised anywhere inside the reader to give the file back to hcl2."""


def read_plain(text: str) -> dict[str, Any] | None:
    """Return `{"migration": [<block>, ...]}` (or `{}`) as hcl2 would, or None to decline.

    Blocks come out as hcl2 8.x serializes them with `strip_string_quotes`: a list with
    one dict per occurrence, each marked `"__is_block__": True`. Other top-level blocks and
    attributes are checked to be plain too (so the whole file is known to parse) and dropped.
    """
    if "\r" in text:  # CRLF: hcl2 has its own rules for where a \r may stand
        return None
    try:
        reader = _Reader(text + "\n")  # hcl2 appends the same newline before parsing
        return reader.document()
    except _Decline:
        return None


class _Reader:
    """A cursor over the text; each method reads one construct or raises _Decline."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.strict = False  # reading values inside `migration { }`

    def skip(self, pattern: re.Pattern[str]) -> None:
        self.pos = pattern.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def expect(self, pattern: re.Pattern[str]) -> re.Match[str]:
        match = pattern.match(self.text, self.pos)
        if match is None:
            raise _Decline
        self.pos = match.end()
        return match

    def document(self) -> dict[str, Any]:
        body = self.body(top=True, strict=False)
        if self.pos != len(self.text):
            raise _Decline
        if "migration" not in body:
            return {}
        migration = body["migration"]
        if not isinstance(migration, _Blocks) or migration.labelled:
            raise _Decline  # an attribute or labels: hcl2's shape for those is its own
        return {"migration": list(migration)}

    def body(self, *, top: bool, strict: bool) -> dict[str, Any]:
        """Items up to the closing `}` (left unread) or, at the top, the end of the text.

        `strict` inside `migration { }`: there a labelled block is declined, since only
        its values, not just its syntax, must match hcl2's.
        """
        items: dict[str, Any] = {}
        self.skip(_GAP)
        while self.pos < len(self.text) and self.peek() != "}":
            name = self.expect(_NAME)[0]
            if name in _RESERVED or name.startswith("__"):
                raise _Decline
            if name in items and not isinstance(items[name], _Blocks):
                raise _Decline  # a repeated attribute, or a block after an attribute
            self.skip(_SPACE)
            if self.peek() == "=":
                if name in items or self.text.startswith(("==", "=>"), self.pos):
                    raise _Decline
                self.pos += 1
                self.skip(_SPACE)
                self.strict = strict
                items[name] = self.value()
            else:
                blocks = items.setdefault(name, _Blocks())
                if self.labels():
                    if strict:
                        raise _Decline
                    blocks.labelled = True
                blocks.append(self.block_body(strict=strict or (top and name == "migration")))
            self.end_of_item(top=top)
        if top and self.pos < len(self.text):
            raise _Decline  # a stray `}` at the top
        return {k: list(v) if isinstance(v, _Blocks) and not top else v for k, v in items.items()}

    def labels(self) -> bool:
        """Read a block's labels up to and including `{`; say whether there were any."""
        labelled = False
        while self.peek() != "{":
            if self.peek() == '"':
                self.string()
            elif self.expect(_NAME)[0] in _RESERVED:
                raise _Decline
            labelled = True
            self.skip(_SPACE)
        self.pos += 1
        return labelled

    def block_body(self, *, strict: bool) -> dict[str, Any]:
        body = self.body(top=False, strict=strict)
        if self.peek() != "}":
            raise _Decline
        self.pos += 1
        body["__is_block__"] = True
        return body

    def end_of_item(self, *, top: bool) -> None:
        """An item ends its line (a comment may follow) or, inside a block, meets its `}`."""
        self.skip(_SPACE)
        if self.peek() == "}" and not top:
            return
        self.expect(_LINE_BREAK)
        self.skip(_GAP)

    def value(self) -> Any:
        char = self.peek()
        if char == '"':
            return self.string(templates=not self.strict)
        if char == "[":
            return self.list_()
        if char == "{":
            return self.object_()
        if char == "-" or char.isdigit():
            number = self.expect(_NUMBER)
            if self.text.startswith((".", "e", "E"), self.pos):
                raise _Decline  # `1.`, exponents: hcl2 keeps those as expressions or fails
            return float(number[0]) if number[1] else int(number[0])
        name = self.expect(_NAME)[0]
        if name not in _LITERALS:
            raise _Decline  # a reference, a function call, a `for` expression...
        return _LITERALS[name]

    def string(self, *, templates: bool = False) -> str:
        """A quoted string's value; with `templates`, only to check it (see _TEMPLATED)."""
        raw = self.expect(_TEMPLATED if templates else _STRING)[1]
        if templates and "${" in raw:
            for reference in _REFERENCE.findall(raw):
                if _RESERVED.intersection(reference.split(".")):
                    raise _Decline  # `${for}`, `${a.in}`: keywords where hcl2 wants a name
        return _ESCAPE.sub(_unescape, raw) if "\\" in raw else raw

    def list_(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        self.skip(_GAP)
        while self.peek() != "]":
            items.append(self.value())
            self.skip(_GAP)
            if self.peek() == ",":
                self.pos += 1
                self.skip(_GAP)
            elif self.peek() != "]":
                raise _Decline
        self.pos += 1
        return items

    def object_(self) -> dict[str, Any]:
        self.pos += 1
        items: dict[str, Any] = {}
        self.skip(_GAP)
        while self.peek() != "}":
            if self.peek() == '"':
                start = self.pos
                key = self.string()
                if "\\" in self.text[start : self.pos]:
                    raise _Decline
            else:
                key = self.expect(_NAME)[0]
                if key in _RESERVED:
                    raise _Decline
            if key in items:
                raise _Decline
            self.skip(_SPACE)
            if self.peek() not in ("=", ":") or self.text.startswith(("==", "=>", "::"), self.pos):
                raise _Decline
            self.pos += 1
            self.skip(_SPACE)
            items[key] = self.value()
            self.skip(_SPACE)
            line_break = self.peek() in ("\n", "#", "/")
            if line_break:  # then maybe the comma, on a later line
                self.expect(_LINE_BREAK)
                self.skip(_GAP)
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}" and not line_break:
                raise _Decline  # hcl2 takes `{a = 1 b = 2}`; we want a separator
            self.skip(_GAP)
        self.pos += 1
        return items


class _Blocks(list[Any]):
    """The occurrences of one block type in one body; `labelled` if any had labels."""

    labelled = False


def _unescape(match: re.Match[str]) -> str:
    """Resolve one escape the way hcl2 does; decline the ones it would keep verbatim."""
    hex_digits = match[1] or match[2]
    if hex_digits is None:
        return _SIMPLE[match[3]]
    codepoint = int(hex_digits, 16)
    if codepoint > 0x10FFFF or 0xD800 <= codepoint < 0xE000:  # noqa: PLR2004 - Unicode's limits
        raise _Decline
    return chr(codepoint)
