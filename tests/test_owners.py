"""One owner per decision (issue 17.3), checked by walking every module's syntax tree.

- A run's lifecycle has one home: only the recorder (`flywall.core.runtime.recorder`)
  constructs `RunStarted` and `RunFinished`, so no other code can open a run it never closes,
  or close one twice.

Each rule is proved not vacuous by a violation planted in a copy of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "journal", "cli", "api")
RECORDER = "core/runtime/recorder.py"
RUN_EVENTS = {"RunStarted", "RunFinished"}


def _called_name(call: ast.Call) -> str | None:
    """The last name of what `call` calls: `RunStarted` for `ev.RunStarted(...)`."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def run_event_constructions(name: str, source: str) -> list[str]:
    """Each `RunStarted(...)`/`RunFinished(...)` call in `source`, as 'path:line Kind'.

    Matching on them (`case ev.RunFinished():`) is reading, not constructing: not counted.
    """
    return [
        f"{name}:{node.lineno} {_called_name(node)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and _called_name(node) in RUN_EVENTS
    ]


def run_lifecycle_violations(sources: dict[str, str]) -> list[str]:
    """Constructions of the run's own events outside the recorder."""
    return [
        hit
        for name, source in sorted(sources.items())
        if name != RECORDER
        for hit in run_event_constructions(name, source)
    ]


def our_sources() -> dict[str, str]:
    """Each of our modules' text by its path in the repository (sample migrations too)."""
    return {
        str(path.relative_to(ROOT)): path.read_text()
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def test_only_the_recorder_writes_a_run_start_or_finish() -> None:
    assert run_lifecycle_violations(our_sources()) == []


def test_the_recorder_is_found_writing_them() -> None:
    """The walk sees the constructions it allows (else it would prove nothing)."""
    hits = run_event_constructions(RECORDER, our_sources()[RECORDER])
    assert {hit.rpartition(" ")[2] for hit in hits} == RUN_EVENTS


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        (
            "core/runtime/engine.py",
            "def f(self):\n    return ev.RunFinished(outcome='failed')\n",
        ),
        ("core/services/rescue.py", "from x import RunStarted\nRunStarted(command='c')\n"),
    ],
)
def test_a_planted_run_event_is_found(module: str, planted: str) -> None:
    sources = our_sources()
    sources[module] += "\n" + planted
    assert any(v.startswith(module + ":") for v in run_lifecycle_violations(sources))


def test_a_match_on_a_run_event_is_no_construction() -> None:
    source = "match e:\n    case ev.RunFinished():\n        pass\n"
    assert run_event_constructions("m", source) == []
