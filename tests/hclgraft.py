"""Whether a grafted HCL parse (`hcl._grafted`: only the edited block re-parsed) is exactly
the parse of the whole text, for the tests that edit documents."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from lark import Token

from flywall.core.formats import hcl

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pytest


def shape(node: Any) -> object:
    """A tree as nested tuples: rule names, and each token's type, text and offsets."""
    if node is None:
        return None
    if isinstance(node, Token):
        return (node.type, str(node), node.start_pos, node.end_pos)
    return (node.data, tuple(shape(child) for child in node.children))


@contextlib.contextmanager
def every_graft_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Compare each graft made in the block with the whole parse (failing the test on a
    difference); the list it gives collects the texts grafted. Starts with nothing
    remembered, so no edit skips the graft for a text parsed earlier."""
    grafted: list[str] = []
    graft = hcl._grafted

    def checked(tree: Any, block: Any, splices: Any, text: str) -> Any:
        parsed = graft(tree, block, splices, text)
        if parsed is not None:
            whole = hcl._indexed(hcl._parse_tree(text))
            assert shape(parsed.tree) == shape(whole.tree), text
            assert dict(parsed.parents) == dict(whole.parents), text
            grafted.append(text)
        return parsed

    monkeypatch.setattr(hcl, "_grafted", checked)
    monkeypatch.setattr(hcl, "_RECENT", type(hcl._RECENT)())
    yield grafted
