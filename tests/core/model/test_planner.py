"""The planner alone: orders, targets and refusals computed from versions and states only."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywall.core.model.errors import GraphError, NothingToDo, UsageError
from flywall.core.model.lifecycle import State
from flywall.core.model.planner import UP_FROM, plan_down, plan_up, resolve_target


@dataclass(frozen=True)
class Node:
    version: str
    depends_on: tuple[str, ...] = ()
    schema_version: str | None = None


def v(n: int) -> str:
    return f"2024010100{n:02d}"


A, B, C, D, E = (v(n) for n in range(1, 6))


# -- plan_up ------------------------------------------------------------------------------


def test_independent_migrations_are_planned_in_version_order():
    nodes = [Node(C), Node(A), Node(B)]
    assert plan_up(nodes, {}) == [A, B, C]


def test_a_dependency_comes_first_even_when_its_version_is_newer():
    nodes = [Node(A, (D,)), Node(B), Node(C), Node(D)]
    assert plan_up(nodes, {}) == [B, C, D, A]


def test_ties_among_ready_migrations_are_broken_by_version():
    """Whenever several migrations are ready, the lowest version goes next."""
    nodes = [Node(A, (E,)), Node(B, (E,)), Node(C), Node(D, (C,)), Node(E)]
    assert plan_up(nodes, {}) == [C, D, E, A, B]


def test_applied_migrations_are_left_out_and_satisfy_their_dependents():
    nodes = [Node(A), Node(B, (A,)), Node(C, (B,))]
    states = {A: State.APPLIED, B: State.FAILED}
    assert plan_up(nodes, states) == [B, C]
    assert plan_up(nodes, {A: State.APPLIED, B: State.APPLIED, C: State.APPLIED}) == []


def test_failed_and_rolled_back_migrations_are_planned_again_but_running_ones_are_not():
    nodes = [Node(A), Node(B), Node(C), Node(D), Node(E)]
    states = {
        A: State.FAILED,
        B: State.ROLLED_BACK,
        C: State.RUNNING,
        D: State.ROLLING_BACK,
        E: State.APPLIED,
    }
    assert plan_up(nodes, states) == [A, B]


def test_a_dependency_cycle_is_refused_naming_the_versions_in_it():
    nodes = [Node(A), Node(B, (D,)), Node(C, (B,)), Node(D, (C,)), Node(E, (D,))]
    with pytest.raises(GraphError, match="cycle") as info:
        plan_up(nodes, {})
    message = str(info.value)
    assert all(x in message for x in (B, C, D))
    assert A not in message


def test_a_migration_depending_on_itself_is_a_cycle():
    with pytest.raises(GraphError, match=f"cycle among migrations {A}$"):
        plan_up([Node(A, (A,))], {})


def test_an_unknown_dependency_is_refused_naming_both_versions():
    with pytest.raises(GraphError, match=f"migration {B} depends on unknown migration {C}"):
        plan_up([Node(A), Node(B, (C,))], {})


def test_an_unknown_dependency_that_the_journal_shows_applied_is_satisfied():
    """A file removed by a firmware downgrade still counts once applied."""
    assert plan_up([Node(B, (A,))], {A: State.APPLIED}) == [B]


def test_a_dependency_left_out_of_the_plan_is_refused():
    nodes = [Node(A), Node(B, (A,))]
    with pytest.raises(GraphError, match=f"depends on {A}, which is running"):
        plan_up(nodes, {A: State.RUNNING})


def test_a_target_limits_the_plan_to_versions_up_to_it():
    nodes = [Node(A), Node(B), Node(C), Node(D)]
    assert plan_up(nodes, {}, target=B) == [A, B]
    assert plan_up(nodes, {A: State.APPLIED}, target=C) == [B, C]


def test_a_target_below_a_needed_dependency_is_refused():
    nodes = [Node(A, (C,)), Node(B), Node(C)]
    with pytest.raises(GraphError, match=f"{A} depends on {C}, which is pending"):
        plan_up(nodes, {}, target=B)


def test_a_target_may_name_a_schema_version_and_resolves_to_its_newest_migration():
    nodes = [Node(A, schema_version="1.0"), Node(B, schema_version="1.1"), Node(C)]
    nodes += [Node(D, schema_version="1.1"), Node(E, schema_version="2.0")]
    assert resolve_target(nodes, "1.1") == D
    assert resolve_target(nodes, C) == C
    assert plan_up(nodes, {}, target="1.1") == [A, B, C, D]


def test_a_version_wins_over_a_schema_version_that_looks_the_same():
    nodes = [Node(A), Node(B, schema_version=A), Node(C, schema_version=A)]
    assert resolve_target(nodes, A) == A


def test_an_unknown_target_is_a_usage_error():
    with pytest.raises(UsageError, match=r"unknown target '9\.9'"):
        plan_up([Node(A, schema_version="1.0")], {}, target="9.9")


# -- plan_down ----------------------------------------------------------------------------

APPLIED = [(A, 3), (B, 7), (C, 12), (D, 20)]
"""(version, seq it was applied at): C was applied after B, D last."""


def test_rollback_by_steps_takes_the_newest_applications_first():
    assert plan_down(APPLIED, {}, steps=1) == [D]
    assert plan_down(APPLIED, {}, steps=3) == [D, C, B]
    assert plan_down(APPLIED, {}, steps=99) == [D, C, B, A]


def test_rollback_order_follows_when_migrations_were_applied_not_their_versions():
    applied = [(A, 30), (B, 10), (C, 20)]
    assert plan_down(applied, {}, steps=2) == [A, C]
    assert plan_down(applied, {}, to=A) == [C, B]


def test_rollback_of_one_version_takes_only_that_version():
    assert plan_down(APPLIED, {}, version=B) == [B]


def test_rollback_to_a_version_takes_everything_applied_after_it():
    assert plan_down(APPLIED, {}, to=B) == [D, C]
    assert plan_down(APPLIED, {}, to="0") == [D, C, B, A]


def test_rollback_that_would_leave_an_applied_dependent_behind_is_refused():
    dependents = {B: [C, E]}
    with pytest.raises(
        GraphError, match=rf"cannot roll back {B}: applied migration\(s\) {C} depend on it$"
    ):
        plan_down(APPLIED, dependents, version=B)
    with pytest.raises(GraphError, match=f"cannot roll back {B}"):
        plan_down([(A, 1), (B, 2), (C, 0)], dependents, steps=2)


def test_rolling_back_a_dependent_together_with_its_dependency_is_allowed():
    assert plan_down(APPLIED, {B: [C], C: [D]}, to=A) == [D, C, B]
    assert plan_down(APPLIED, {B: [C, E]}, version=D) == [D]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, UsageError, "exactly one of"),
        ({"version": A, "steps": 1}, UsageError, "exactly one of"),
        ({"steps": 1, "to": A}, UsageError, "exactly one of"),
        ({"version": E}, UsageError, f"migration {E} is not applied"),
        ({"steps": 0}, UsageError, "at least 1"),
        ({"to": D}, NothingToDo, "nothing to roll back"),
    ],
)
def test_rollback_requests_that_name_nothing_rollable_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        plan_down(APPLIED, {}, **kwargs)


def test_rollback_with_nothing_applied_is_nothing_to_do():
    with pytest.raises(NothingToDo):
        plan_down([], {}, steps=1)


# -- properties ---------------------------------------------------------------------------

UP_STATES = st.sampled_from([*UP_FROM, State.APPLIED])


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[Node], dict[str, State]]:
    """A random DAG whose edges point from a later to an earlier node of a hidden order.

    Versions are shuffled against that order, so a dependency is as likely to have a newer
    version as an older one.
    """
    n = draw(st.integers(1, 10))
    versions = draw(st.permutations([v(i) for i in range(n)]))
    deps = [
        tuple(draw(st.lists(st.sampled_from(versions[:i]), unique=True)) if i else ())
        for i in range(n)
    ]
    nodes = [Node(versions[i], deps[i]) for i in range(n)]
    states = {x.version: draw(UP_STATES) for x in nodes}
    return draw(st.permutations(nodes)), states


@settings(max_examples=200, deadline=None)
@given(dag=dags())
def test_for_any_dag_the_plan_holds_exactly_the_unapplied_nodes_dependencies_first(dag):
    """Every dependency precedes its dependents, and each next step is the lowest ready version.

    That second rule pins the order down completely: the plan is the one topological order
    that breaks every tie by version.
    """
    nodes, states = dag
    plan = plan_up(nodes, states)
    wanted = {x.version for x in nodes if states[x.version] is not State.APPLIED}
    assert len(plan) == len(set(plan))
    assert set(plan) == wanted

    position = {version: i for i, version in enumerate(plan)}
    by_version = {x.version: x for x in nodes}
    for version in plan:
        for dep in by_version[version].depends_on:
            assert dep in position or states[dep] is State.APPLIED
            if dep in position:
                assert position[dep] < position[version]

    placed: set[str] = set()
    for version in plan:
        ready = [
            w
            for w in wanted - placed
            if all(d in placed or d not in wanted for d in by_version[w].depends_on)
        ]
        assert version == min(ready)
        placed.add(version)


def _has_cycle(nodes: list[Node]) -> set[str]:
    """Return the versions that lie on some cycle (independent of the planner)."""
    graph = {x.version: set(x.depends_on) for x in nodes}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    return {x for x in graph if reaches(x, x)}


@st.composite
def graphs(draw: st.DrawFn) -> list[Node]:
    n = draw(st.integers(1, 7))
    versions = [v(i) for i in range(n)]
    return [
        Node(x, tuple(draw(st.lists(st.sampled_from(versions), max_size=3, unique=True))))
        for x in versions
    ]


@settings(max_examples=200, deadline=None)
@given(nodes=graphs())
def test_for_any_graph_a_plan_exists_exactly_when_there_is_no_cycle(nodes):
    """A cycle is refused with GraphError naming at least every version on a cycle."""
    on_cycle = _has_cycle(nodes)
    if not on_cycle:
        assert sorted(plan_up(nodes, {})) == sorted(x.version for x in nodes)
        return
    with pytest.raises(GraphError, match="cycle") as info:
        plan_up(nodes, {})
    named = set(str(info.value).split("migrations ", 1)[1].split(", "))
    assert on_cycle <= named


@settings(max_examples=100, deadline=None)
@given(dag=dags(), data=st.data())
def test_for_any_dag_and_target_the_plan_stops_at_the_target_or_is_refused(dag, data):
    """With a target, the plan is the unapplied nodes up to it, unless one needs a later one."""
    nodes, states = dag
    target = data.draw(st.sampled_from(sorted(x.version for x in nodes)))
    wanted = {x.version for x in nodes if states[x.version] is not State.APPLIED}
    in_reach = {w for w in wanted if w <= target}
    by_version = {x.version: x for x in nodes}
    blocked = any(d in wanted and d > target for w in in_reach for d in by_version[w].depends_on)
    if blocked:
        with pytest.raises(GraphError, match="not in this plan"):
            plan_up(nodes, states, target=target)
    else:
        assert set(plan_up(nodes, states, target=target)) == in_reach
