"""Flywall's declarative config migrations: `VERSION_slug.hcl` files (FLYWALL.md §4).

Flywall describes config changes as data, in its own format::

    migration "1.1" "1.2" {                       # from, to: each "X.Y"
      description = "Rename the widget block"
      operation "rename_block" "legacy_widget" {  # type, target
        new_name = "widget"
      }
    }

Flywall ships such a file but applies only one special case of it. Here a file of these
blocks is a config migration like any other: discovery describes it (`parse`, without
touching any config), and `functions` gives the engine an `up` and a `down` to call on the
byte-preserving document (core/formats/hcl.py), so checksums, signatures, the journal and the
exact-bytes undo treat it as they treat a Python migration.

Why the semantics are what they are (README, "Declarative config migrations"):

- A target is a dotted path of block types from the top of the file (``dns.serve``), ending
  in a block type for the block operations and in an attribute name for the attribute ones
  (a bare name is a top-level attribute). Every block along the path matches, whatever its
  labels: Flywall's shapes are renamed by type (``vpn_link_group "g"``).
- Additions never overwrite: an operator's existing block or value is what the box runs.
- `preserve = true` means "never lose what an operator set": a removal keeps a block or
  value that differs from its `defaults` (a warning says so), and a rename whose new name is
  already taken keeps both instead of failing. On an addition it speaks for its inverse:
  the down then keeps a block or value an operator changed since.
- `defaults` is what an untouched block holds (its attributes) or, as ``value``, an
  attribute's value: what an addition writes and what a removal's inverse writes back.
- The down is the operations inverted in reverse order, so it needs no second description.
- Several `migration` blocks chain by their labels: overlaps are refused, gaps are jumped.
  Up applies each step whose `to` is above the config's `schema_version` (absent means
  "1.0", as Flywall reads it) and sets it to the last `to`; down inverts each step at or
  below it, newest first, and sets it to the first `from`.
"""

from __future__ import annotations

import itertools
import re
import types
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec

from flywall.core.model.errors import ConfigParseError, DiscoveryError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from flywall.core.formats.hcl import Block, Body, Document

__all__ = [
    "OPERATIONS",
    "Operation",
    "RenameConflict",
    "Step",
    "functions",
    "invert",
    "parse",
    "run",
]

OPERATIONS = (
    "add_block",
    "remove_block",
    "rename_block",
    "add_attribute",
    "remove_attribute",
    "rename_attribute",
)
_ARGUMENTS = ("new_name", "preserve", "defaults")
_LABEL = r"(\d+)\.(\d+)"  # always with re.fullmatch: `$` would let "1.1\n" through
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_PATH = rf"{_NAME}(\.{_NAME})*"
_INVERSE = {
    "add_block": "remove_block",
    "remove_block": "add_block",
    "add_attribute": "remove_attribute",
    "remove_attribute": "add_attribute",
}
# What each argument means for which operation; anything else is refused, so a typo or a
# misplaced argument is an error at discovery instead of silently doing nothing.
_ALLOWED = {
    "add_block": {"defaults", "preserve"},
    "remove_block": {"defaults", "preserve"},
    "rename_block": {"new_name", "preserve"},
    "add_attribute": {"defaults", "preserve"},
    "remove_attribute": {"defaults", "preserve"},
    "rename_attribute": {"new_name", "preserve"},
}

Scalar = str | int | float | bool


class RenameConflict(ValueError):
    """A rename would give a body two blocks or attributes of the same name."""


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """One `operation "TYPE" "TARGET" { ... }` block, checked; `line` is where it starts."""

    type: str
    target: str
    new_name: str | None = None
    preserve: bool = False
    defaults: dict[str, Scalar] = {}
    line: int = 0

    @property
    def parent(self) -> tuple[str, ...]:
        """The block types leading to the block or attribute the operation acts on."""
        return tuple(self.target.split("."))[:-1]

    @property
    def name(self) -> str:
        """The block type or attribute name the operation acts on."""
        return self.target.rpartition(".")[2]

    def __str__(self) -> str:
        renamed = f" -> {self.new_name}" if self.new_name else ""
        return f'{self.type} "{self.target}"{renamed}'


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One `migration "FROM" "TO" { ... }` block, checked."""

    from_version: str
    to_version: str
    description: str = ""
    operations: tuple[Operation, ...] = ()
    line: int = 0


def parse(path: str, text: str) -> tuple[Step, ...]:
    """Read and check a declarative file; nothing is applied.

    :param path: the file's name as the user should see it in errors.
    :returns: its steps, ordered by version.
    :raises DiscoveryError: the text is not HCL, or not this format; names file and line.
    """
    from flywall.core.formats.hcl import Document

    try:
        document = Document.parse(text, path)
    except ConfigParseError as e:
        where = f"{path}:{e.line}:{e.column}"
        error = DiscoveryError(where, str(e).removeprefix(f"{where}: "))
        error.path = path
        raise error from e
    for name in document.body.attributes:
        line = document.body.attribute_line(name) or 1
        raise _error(path, line, f"unexpected attribute {name!r}: only migration blocks here")
    top = _blocks_of(path, document.body, "migration", "at the top")
    steps = [_step(path, block) for block in top]
    if not steps:
        raise DiscoveryError(path, 'holds no migration "FROM" "TO" { ... } block')
    steps.sort(key=lambda s: _key(s.from_version))
    for earlier, later in itertools.pairwise(steps):
        if _key(later.from_version) < _key(earlier.to_version):
            detail = (
                f'migration "{later.from_version}" "{later.to_version}" overlaps '
                f'"{earlier.from_version}" "{earlier.to_version}" (line {earlier.line})'
            )
            raise _error(path, later.line, detail)
    return tuple(steps)


def invert(operation: Operation) -> Operation:
    """The operation that undoes `operation` (FLYWALL.md §4).

    An addition and a removal swap, carrying `defaults` (what the block holds, the value
    the attribute has) and `preserve`; a rename swaps its target's last name with
    `new_name`. So `invert(invert(op)) == op`.
    """
    if operation.type in _INVERSE:
        return msgspec.structs.replace(operation, type=_INVERSE[operation.type])
    assert operation.new_name is not None, "a rename always names its new name"
    parent = operation.target.rpartition(".")[0]
    target = f"{parent}.{operation.new_name}" if parent else operation.new_name
    return msgspec.structs.replace(operation, target=target, new_name=operation.name)


class Script(Protocol):
    """What `functions` reads of a discovered migration (discovery's `Migration` is one)."""

    @property
    def path(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def source(self) -> bytes: ...


def functions(migration: Script) -> types.ModuleType:
    """The `up` and `down` the engine calls for a declarative migration, as for a module.

    Built from `migration.source` (not the file), like a Python migration's module, so a
    migration rolls back from the journal's stored copy after its file is gone.

    :raises DiscoveryError: the source is not a valid declarative file.
    """
    steps = parse(migration.path, migration.source.decode("utf-8"))

    def up(ctx: Any, config: Document) -> None:
        run(steps, "up", config, ctx.log)

    def down(ctx: Any, config: Document) -> None:
        run(steps, "down", config, ctx.log)

    module = types.ModuleType(f"flywall_migration_{migration.version}", migration.description)
    module.__file__ = migration.path
    module.up, module.down = up, down  # type: ignore[attr-defined]
    return module


def run(
    steps: tuple[Step, ...], direction: str, config: Document, log: Callable[..., None]
) -> None:
    """Apply the steps to `config` (up), or their inverses newest first (down).

    :raises ValueError: the config's schema_version is not X.Y, or a down finds the
        config newer than the migration; the message names the config file, and the
        engine then writes nothing.
    :raises RenameConflict: a rename would make a duplicate (and `preserve` is not set).
    """
    current = _config_version(config)
    if direction == "up":
        _up(steps, current, config, log)
    else:
        _down(steps, current, config, log)


def _up(
    steps: tuple[Step, ...], current: tuple[int, int], config: Document, log: Callable[..., None]
) -> None:
    """Each step whose `to` is above the config's version, in order; gaps are jumped."""
    last = steps[-1].to_version
    if current >= _key(last):
        log(f"schema_version is already {_shown(current)}: nothing to do")
        return
    for step in steps:
        if current < _key(step.to_version):
            for operation in step.operations:
                _apply(operation, config, log)
            current = _key(step.to_version)
    config.schema_version = last


def _down(
    steps: tuple[Step, ...], current: tuple[int, int], config: Document, log: Callable[..., None]
) -> None:
    """Each step at or below the config's version inverted, newest first; back to the first."""
    last, first = steps[-1].to_version, steps[0].from_version
    if current > _key(last):
        msg = (
            f"{config.path}: schema_version is {_shown(current)}, above this migration's "
            f"{last}; roll back what raised it first"
        )
        raise ValueError(msg)
    if current <= _key(first):
        log(f"schema_version is {_shown(current)}: nothing to undo")
        return
    for step in reversed(steps):
        if current >= _key(step.to_version):
            for operation in reversed(step.operations):
                _apply(invert(operation), config, log)
            current = _key(step.from_version)
    config.schema_version = first


# -- applying one operation --------------------------------------------------------------------


def _apply(operation: Operation, config: Document, log: Callable[..., None]) -> None:
    """Apply `operation` in every body its path leads to."""
    bodies = list(_bodies(config.body, operation.parent))
    if not bodies:
        log(f"{operation}: no {'.'.join(operation.parent)} block here")
    act = _ACTIONS[operation.type]
    try:
        for body in bodies:
            act(operation, body, log)
    except RenameConflict as e:
        raise RenameConflict(f"{config.path}: {e}") from None


def _bodies(top: Body, path: tuple[str, ...]) -> Iterator[Body]:
    """Every body at `path` (block types from the top), in file order."""
    if not path:
        yield top
        return
    for block in top.blocks(path[0]):
        yield from _bodies(block.body, path[1:])


def _add_block(operation: Operation, body: Body, log: Callable[..., None]) -> None:
    if body.blocks(operation.name):
        log(f"{operation}: kept the {operation.name} block already there")
        return
    body.add_block(operation.name, **operation.defaults)
    log(f"{operation}: added {_block_text(operation.name, operation.defaults)}")


def _remove_block(operation: Operation, body: Body, log: Callable[..., None]) -> None:
    for block in body.blocks(operation.name):
        untouched = _holds_only(block, operation.defaults)
        if not untouched and operation.preserve:
            where = f"{_named(block)} at line {block.line}"
            log(f"{operation}: kept {where}: it holds more than its defaults", "warning")
            continue
        if not untouched:
            held = _block_text("", block.attributes).strip()
            held += " and nested blocks" if block.blocks() else ""
            log(f"{operation}: removed {_named(block)}, which held {held}", "warning")
        else:
            log(f"{operation}: removed {_named(block)}")
        body.remove_block(block)


def _rename_block(operation: Operation, body: Body, log: Callable[..., None]) -> None:
    assert operation.new_name is not None
    for block in body.blocks(operation.name):
        if _taken(body, operation, block):
            where = f"{_named(block)} at line {block.line}"
            if operation.preserve:
                log(f"{operation}: kept {where}: {operation.new_name} exists", "warning")
                continue
            msg = (
                f"{operation}: {where} would duplicate the {operation.new_name} block "
                "already there (preserve = true keeps both)"
            )
            raise RenameConflict(msg)
        body.rename_block(block, operation.new_name)
        log(f"{operation}: renamed at line {block.line}")


def _taken(body: Body, operation: Operation, block: Block) -> bool:
    """Whether `body` already has a block of the new type with exactly `block`'s labels."""
    assert operation.new_name is not None
    return any(b.labels == block.labels for b in body.blocks(operation.new_name, *block.labels))


def _add_attribute(operation: Operation, body: Body, log: Callable[..., None]) -> None:
    if body.has(operation.name):
        log(
            f"{operation}: kept the value already set at line {body.attribute_line(operation.name)}"
        )
        return
    value = operation.defaults["value"]
    body.set(operation.name, value)
    log(f"{operation}: set {operation.name} = {_literal(value)}")


def _remove_attribute(operation: Operation, body: Body, log: Callable[..., None]) -> None:
    if not body.has(operation.name):
        return
    line = body.attribute_line(operation.name)
    value = body.get(operation.name)
    untouched = "value" not in operation.defaults or _equal(value, operation.defaults["value"])
    if not untouched and operation.preserve:
        log(f"{operation}: kept {operation.name} = {_literal(value)} at line {line}", "warning")
        return
    level = "info" if untouched else "warning"
    log(f"{operation}: removed {operation.name} = {_literal(value)} at line {line}", level)
    body.delete(operation.name)


def _rename_attribute(operation: Operation, body: Body, log: Callable[..., None]) -> None:
    assert operation.new_name is not None
    if not body.has(operation.name):
        return
    line = body.attribute_line(operation.name)
    if body.has(operation.new_name):
        if operation.preserve:
            log(f"{operation}: kept both at line {line}: {operation.new_name} is set", "warning")
            return
        msg = (
            f"{operation}: {operation.new_name} is already set at line "
            f"{body.attribute_line(operation.new_name)} (preserve = true keeps both)"
        )
        raise RenameConflict(msg)
    body.rename(operation.name, operation.new_name)
    log(f"{operation}: renamed at line {line}")


_ACTIONS: dict[str, Callable[[Operation, Body, Callable[..., None]], None]] = {
    "add_block": _add_block,
    "remove_block": _remove_block,
    "rename_block": _rename_block,
    "add_attribute": _add_attribute,
    "remove_attribute": _remove_attribute,
    "rename_attribute": _rename_attribute,
}


def _holds_only(block: Block, defaults: dict[str, Scalar]) -> bool:
    """Whether the block holds exactly `defaults`: nothing an operator added or changed."""
    attributes = block.attributes
    if block.blocks() or attributes.keys() != defaults.keys():
        return False
    return all(_equal(attributes[name], value) for name, value in defaults.items())


def _equal(value: object, default: Scalar) -> bool:
    """Compare a config value with a default; a string default matches the value's literal.

    Flywall types `defaults` as a map of strings, and its loader turns "false" into false
    for a bool setting, so `enabled = false` holds the default "false".
    """
    if type(value) is type(default):
        return value == default
    if isinstance(default, str) and isinstance(value, bool | int | float):
        return _literal(value) == default
    return False


def _block_text(name: str, attributes: Mapping[str, object]) -> str:
    inner = ", ".join(f"{k} = {_literal(v)}" for k, v in attributes.items())
    return f"{name} {{ {inner} }}" if inner else f"{name} {{}}"


def _named(block: Block) -> str:
    """The block's header as written: `uplink_group "main"`."""
    return " ".join([block.type, *map(_literal, block.labels)])


def _literal(value: object) -> str:
    """A value as HCL spells it, for the log."""
    from flywall.core.formats.hcl import _render  # the one place literals are spelled

    try:
        return _render(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return repr(value)


# -- versions ------------------------------------------------------------------------------------


def _key(label: str) -> tuple[int, int]:
    match = re.fullmatch(_LABEL, label)
    assert match is not None, "labels are checked by parse"
    return int(match[1]), int(match[2])


def _shown(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _config_version(config: Document) -> tuple[int, int]:
    """The config's schema_version; absent means "1.0", as Flywall reads it (FLYWALL.md §2)."""
    text = config.schema_version
    if text is None:
        return (1, 0)
    match = re.fullmatch(_LABEL, text)
    if match is None:
        msg = f'{config.path}: schema_version {_literal(text)} is not "X.Y" (two integers)'
        raise ValueError(msg)
    return int(match[1]), int(match[2])


# -- parsing -------------------------------------------------------------------------------------


def _error(path: str, line: int, detail: str) -> DiscoveryError:
    """A DiscoveryError whose message names the line, and whose `path` is the file."""
    error = DiscoveryError(f"{path}:{line}", detail)
    error.path = path
    return error


def _blocks_of(path: str, body: Body, block_type: str, where: str) -> list[Block]:
    """The body's blocks, which must all be of `block_type`."""
    blocks = body.blocks()
    for block in blocks:
        if block.type != block_type:
            detail = f"unexpected block {block.type!r} {where}: only {block_type} blocks"
            raise _error(path, block.line, detail)
    return blocks


def _step(path: str, block: Block) -> Step:
    """Check one migration block: two X.Y labels, from below to, a description, operations."""
    labels = block.labels
    if len(labels) != 2:  # noqa: PLR2004 - from and to
        detail = f'migration needs two labels, "FROM" "TO", got {len(labels)}'
        raise _error(path, block.line, detail)
    for label in labels:
        if not re.fullmatch(_LABEL, label):
            detail = f'migration label {_literal(label)} is not "X.Y" (two integers, such as "1.1")'
            raise _error(path, block.line, detail)
    if _key(labels[0]) >= _key(labels[1]):
        detail = f'migration "{labels[0]}" "{labels[1]}" must go up: FROM below TO'
        raise _error(path, block.line, detail)
    description = ""
    for name, value in block.attributes.items():
        line = block.body.attribute_line(name) or block.line
        if name != "description":
            raise _error(path, line, f"unknown migration argument {name!r} (only description)")
        if not isinstance(value, str):
            raise _error(path, line, "description must be a string")
        description = value
    inside = _blocks_of(path, block.body, "operation", "in migration")
    operations = tuple(_operation(path, b) for b in inside)
    return Step(
        from_version=labels[0],
        to_version=labels[1],
        description=description,
        operations=operations,
        line=block.line,
    )


def _operation(path: str, block: Block) -> Operation:
    """Check one operation block: its type, target and arguments."""
    line = block.line
    if len(block.labels) != 2:  # noqa: PLR2004 - type and target
        detail = f'operation needs two labels, "TYPE" "TARGET", got {len(block.labels)}'
        raise _error(path, line, detail)
    kind, target = block.labels
    if kind not in OPERATIONS:
        raise _error(path, line, f"unknown operation {kind!r} (one of {', '.join(OPERATIONS)})")
    if not re.fullmatch(_PATH, target):
        detail = f"operation target {target!r} is not a dotted path such as block or block.name"
        raise _error(path, line, detail)
    if kind.endswith("_attribute") and target == "schema_version":
        raise _error(path, line, "schema_version is set by the migration's labels, not operations")
    if block.blocks():
        nested = block.blocks()[0]
        raise _error(path, nested.line, f"unexpected block {nested.type!r} in operation")
    arguments = block.attributes
    for name in arguments:
        where = block.body.attribute_line(name) or line
        if name not in _ARGUMENTS:
            detail = f"unknown operation argument {name!r} (new_name, preserve, defaults)"
            raise _error(path, where, detail)
        if name not in _ALLOWED[kind]:
            raise _error(path, where, f"{kind} takes no {name!r}")
    return Operation(
        type=kind,
        target=target,
        line=line,
        new_name=_new_name(path, block, kind, target),
        preserve=_preserve(path, block),
        defaults=_defaults(path, block, kind),
    )


def _new_name(path: str, block: Block, kind: str, target: str) -> str | None:
    """A rename's new name: a bare name, or the target's path ending in another name."""
    if not kind.startswith("rename_"):
        return None
    where = block.body.attribute_line("new_name") or block.line
    value = block.get("new_name")
    if value is None:
        raise _error(path, block.line, f"{kind} needs new_name")
    parent = target.rpartition(".")[0]
    if isinstance(value, str) and parent and value.startswith(parent + "."):
        value = value[len(parent) + 1 :]
    if not isinstance(value, str) or not re.fullmatch(_NAME, value):
        detail = f"new_name must be a name in the same place as {target!r}, got {value!r}"
        raise _error(path, where, detail)
    if value == target.rpartition(".")[2]:
        raise _error(path, where, f"new_name {value!r} is the target's own name")
    if kind == "rename_attribute" and not parent and value == "schema_version":
        detail = "schema_version is set by the migration's labels, not operations"
        raise _error(path, where, detail)
    return value


def _preserve(path: str, block: Block) -> bool:
    value = block.get("preserve", default=False)
    if not isinstance(value, bool):
        where = block.body.attribute_line("preserve") or block.line
        raise _error(path, where, f"preserve must be true or false, got {value!r}")
    return value


def _defaults(path: str, block: Block, kind: str) -> dict[str, Scalar]:
    """`defaults`: an object of names to strings (numbers and bools are taken as written)."""
    where = block.body.attribute_line("defaults") or block.line
    value = block.get("defaults", default={})
    if not isinstance(value, dict):
        raise _error(path, where, f"defaults must be an object {{ name = value }}, got {value!r}")
    for name, item in value.items():
        if not re.fullmatch(_NAME, name):
            raise _error(path, where, f"defaults: {name!r} is not an HCL name")
        if not isinstance(item, str | int | float | bool):
            detail = f"defaults: {name} must be a string, number or bool, got {item!r}"
            raise _error(path, where, detail)
    if kind.endswith("_attribute"):
        if set(value) - {"value"}:
            extra = min(set(value) - {"value"})
            detail = f"defaults of {kind} holds only value (the attribute's), not {extra!r}"
            raise _error(path, where, detail)
        if kind == "add_attribute" and "value" not in value:
            raise _error(path, block.line, "add_attribute needs defaults = { value = ... }")
        if kind == "remove_attribute" and block.get("preserve") and "value" not in value:
            detail = "remove_attribute with preserve needs defaults = { value = ... } to compare"
            raise _error(path, block.line, detail)
    return cast("dict[str, Scalar]", value)  # each item was checked to be a Scalar above
