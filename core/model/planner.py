"""What to apply or roll back, and in what order: a pure function of migrations and states.

No files, no database: the planner takes the discovered migrations (anything with
`version` and `depends_on`) and each version's state, so the dependency graph, its cycle
checks and the orders it yields are testable on their own (anchor: alembic's RevisionMap).
"""

from __future__ import annotations

import heapq
import re
from typing import TYPE_CHECKING, Protocol

from flywall.core.model.errors import GraphError, NothingToDo, UsageError
from flywall.core.model.lifecycle import State

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class Node(Protocol):
    """What the planner needs to know of a migration."""

    @property
    def version(self) -> str: ...  # noqa: D102
    @property
    def depends_on(self) -> Sequence[str]: ...  # noqa: D102
    @property
    def schema_version(self) -> str | None: ...  # noqa: D102


UP_FROM = (State.PENDING, State.FAILED, State.ROLLED_BACK)


def order_key(version: str) -> tuple[int, str]:
    """Versions compare as numbers (a 14-digit version is newer than a 12-digit one)."""
    return (int(version), version)


def resolve_target(nodes: Sequence[Node], target: str) -> str:
    """Turn `--target` (a migration version or a schema_version) into a migration version.

    :raises UsageError: nothing matches.
    """
    if any(n.version == target for n in nodes):
        return target
    matching = [n.version for n in nodes if n.schema_version == target]
    if matching:
        return max(matching)
    raise UsageError(f"unknown target {target!r}: neither a migration version nor a schema_version")


def plan_up(
    nodes: Sequence[Node], states: Mapping[str, State], target: str | None = None
) -> list[str]:
    """Return the versions to apply, dependencies first, ties broken by version.

    :raises GraphError: an unknown dependency, a cycle, or a dependency beyond the target.
    """
    by_version = {n.version: n for n in nodes}
    limit = resolve_target(nodes, target) if target else None
    wanted = {
        n.version
        for n in nodes
        if states.get(n.version, State.PENDING) in UP_FROM
        and (limit is None or order_key(n.version) <= order_key(limit))
    }
    for version in sorted(wanted, key=order_key):
        for dep in by_version[version].depends_on:
            if dep not in by_version and states.get(dep) is not State.APPLIED:
                raise GraphError(f"migration {version} depends on unknown migration {dep}")
            if dep not in wanted and states.get(dep, State.PENDING) is not State.APPLIED:
                raise GraphError(
                    f"migration {version} depends on {dep}, which is "
                    f"{states.get(dep, State.PENDING).value} and not in this plan"
                )
    return _topological(wanted, {v: by_version[v].depends_on for v in wanted})


def requirements(nodes: Sequence[Node], version: str) -> set[str]:
    """Every migration `version` depends on, directly or through others (itself not)."""
    by_version = {n.version: n for n in nodes}
    found: set[str] = set()
    todo = list(by_version[version].depends_on) if version in by_version else []
    while todo:
        dep = todo.pop()
        if dep not in found and dep in by_version:
            found.add(dep)
            todo.extend(by_version[dep].depends_on)
    return found


def _topological(wanted: set[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm with a min-heap: dependencies first, then the lowest version."""
    waiting = {v: {d for d in deps[v] if d in wanted} for v in wanted}
    dependents: dict[str, list[str]] = {}
    for version, needs in waiting.items():
        for dep in needs:
            dependents.setdefault(dep, []).append(version)
    ready = [order_key(v) for v, d in waiting.items() if not d]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, version = heapq.heappop(ready)
        order.append(version)
        for other in dependents.get(version, ()):
            needs = waiting[other]
            needs.discard(version)
            if not needs:
                heapq.heappush(ready, order_key(other))
    if len(order) != len(wanted):
        stuck = sorted(set(wanted) - set(order), key=order_key)
        raise GraphError(f"dependency cycle among migrations {', '.join(stuck)}")
    return order


def plan_down(
    applied: Sequence[tuple[str, int]],
    dependents: Mapping[str, Sequence[str]],
    *,
    version: str | None = None,
    steps: int | None = None,
    to: str | None = None,
) -> list[str]:
    """Return the versions to roll back, newest application first.

    `applied` lists (version, seq at which it was applied); `dependents` maps a version to
    the versions that depend on it. Exactly one of `version`, `steps`, `to` is given.

    :raises UsageError: the request names nothing applied, or mixes options.
    :raises GraphError: rolling back `version` would leave an applied dependent behind.
    """
    if sum(x is not None for x in (version, steps, to)) != 1:
        raise UsageError("give exactly one of VERSION, --steps N or --to VERSION")
    newest_first = [v for v, _ in sorted(applied, key=lambda a: a[1], reverse=True)]
    applied_set = set(newest_first)
    if version is not None:
        if version not in applied_set:
            raise UsageError(f"migration {version} is not applied")
        chosen = [version]
    elif steps is not None:
        if steps < 1:
            raise UsageError("--steps must be at least 1")
        chosen = newest_first[:steps]
    else:
        if not re.fullmatch(r"[0-9]{1,64}", str(to)):  # int() takes "²" or 5,000 digits badly
            raise UsageError(f"--to {str(to)[:64]!r}: expected a migration version (digits)")
        chosen = [v for v in newest_first if order_key(v) > order_key(str(to))]
    if not chosen:
        raise NothingToDo("nothing to roll back")
    for v in chosen:
        left = sorted(d for d in dependents.get(v, ()) if d in applied_set and d not in chosen)
        if left:
            raise GraphError(
                f"cannot roll back {v}: applied migration(s) {', '.join(left)} depend on it"
            )
    return chosen


def version_tuple(text: str) -> tuple[int, ...] | None:
    """Read "1.1" or "1.2.0" as numbers, trailing zeros dropped ("1.1.0" is "1.1")."""
    parts = text.split(".")
    if not all(p.isascii() and p.isdigit() for p in parts):
        return None
    numbers = [int(p) for p in parts]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def check_config_ceiling(planned: Sequence[Node], ceiling: str) -> None:
    """Refuse a plan that would stamp the config with a version the firmware refuses.

    Flywall refuses a config whose `schema_version` is above what it supports (v0.3:
    "1.1"), and then boots a nearly empty built-in config (FLYWALL.md §2); so this is
    checked at planning, before anything runs. A version that is not numbers is refused
    too: it cannot be shown to be within the ceiling.

    :raises UsageError: naming the first such migration and the ceiling.
    """
    limit = version_tuple(ceiling)
    assert limit is not None  # settings validated it
    for node in planned:
        stamped = node.schema_version
        if getattr(node, "component", None) != "config" or stamped is None:
            continue
        value = version_tuple(stamped)
        if value is None or value > limit:
            name = getattr(node, "name", node.version)
            raise UsageError(
                f"migration {name} sets the config's schema_version to {stamped!r}, above "
                f"max_config_version {ceiling!r} (what the firmware accepts): refused before "
                "anything ran"
            )
