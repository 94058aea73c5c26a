"""One owner per decision (issue 17.3), checked by walking every module's syntax tree.

- A run's lifecycle has one home: only the recorder (`flywall.core.runtime.recorder`)
  constructs `RunStarted` and `RunFinished`, so no other code can open a run it never closes,
  or close one twice.
- One pen: only the recorder writes to the journal. No other module outside `journal/`
  builds an `Entry` (what `Journal.append` takes) or calls `append`/`adopt_key` on a journal.
- The dry-run choice is the command's: no face reads the `dry_run` setting.
- Which components leave a marker row in state.db is each target's own `marked` attribute
  (asked through `flywall.core.targets.registry.marked`); `("database", "state")` is
  written out nowhere.

Each rule is proved not vacuous by a violation planted in a copy of a module.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

parsed = functools.cache(ast.parse)
"""`ast.parse`, once per source: every rule, and every planted case, walks the same modules."""

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "journal", "cli", "api")
RECORDER = "core/runtime/recorder.py"
RUN_EVENTS = {"RunStarted", "RunFinished"}
JOURNAL_WRITES = {"append", "adopt_key"}


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
        for node in ast.walk(parsed(source))
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


def _receiver(call: ast.Call) -> str:
    """The text of what a method is called on: `real.journal` for `real.journal.append(x)`."""
    assert isinstance(call.func, ast.Attribute)
    return ast.unparse(call.func.value)


def journal_writes(name: str, source: str) -> list[str]:
    """Each place in `source` that writes the journal itself, as 'path:line what'."""
    found = []
    for node in ast.walk(parsed(source)):
        if not isinstance(node, ast.Call):
            continue
        called = _called_name(node)
        if called == "Entry":
            found.append(f"{name}:{node.lineno} Entry")
        elif (
            called in JOURNAL_WRITES
            and isinstance(node.func, ast.Attribute)
            and "journal" in _receiver(node).lower()
        ):
            found.append(f"{name}:{node.lineno} {_receiver(node)}.{called}")
    return found


def pen_violations(sources: dict[str, str]) -> list[str]:
    """Journal writes outside the recorder and the journal package."""
    return [
        hit
        for name, source in sorted(sources.items())
        if name != RECORDER and not name.startswith("journal/")
        for hit in journal_writes(name, source)
    ]


def test_only_the_recorder_writes_the_journal() -> None:
    assert pen_violations(our_sources()) == []


def test_the_recorder_is_found_writing_the_journal() -> None:
    hits = journal_writes(RECORDER, our_sources()[RECORDER])
    assert {hit.rpartition(" ")[2].rpartition(".")[2] for hit in hits} == {
        "Entry",
        "append",
        "adopt_key",
    }


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        (
            "core/rehearsal/dryrun.py",
            "def f(real, e):\n    real.journal.append([e])\n",
        ),
        ("core/services/notify.py", "def f(journal, e):\n    journal.append([e])\n"),
        ("core/services/notify.py", "def f(e):\n    return Entry('Kind', e)\n"),
        ("core/commands/__init__.py", "def f(journal, e):\n    journal.adopt_key(e)\n"),
    ],
)
def test_a_planted_journal_write_is_found(module: str, planted: str) -> None:
    sources = our_sources()
    sources[module] += "\n" + planted
    assert any(v.startswith(module + ":") for v in pen_violations(sources))


def test_appending_to_a_list_is_no_journal_write() -> None:
    source = "def f(done, recorder, e):\n    done.append(e)\n    recorder.append([e])\n"
    assert journal_writes("m", source) == []


FACES = ("cli/", "api/")


def dry_run_choices(name: str, source: str) -> list[str]:
    """Each place in `source` that reads the `dry_run` setting, as 'path:line'."""
    return [
        f"{name}:{node.lineno}"
        for node in ast.walk(parsed(source))
        if isinstance(node, ast.Attribute)
        and node.attr == "dry_run"
        and ast.unparse(node.value).endswith("settings")
    ]


def face_dry_run_violations(sources: dict[str, str]) -> list[str]:
    """The faces' own dry-run choices: the command makes it (`dry_run_if_wanted`)."""
    return [
        hit
        for name, source in sorted(sources.items())
        if name.startswith(FACES)
        for hit in dry_run_choices(name, source)
    ]


def test_no_face_makes_the_dry_run_choice() -> None:
    assert face_dry_run_violations(our_sources()) == []


def test_a_face_choosing_a_dry_run_is_found() -> None:
    sources = our_sources()
    sources["api/app.py"] += "\ndef f(ws, asked):\n    return asked or ws.settings.dry_run\n"
    assert face_dry_run_violations(sources) != []
    assert dry_run_choices("core/commands/__init__.py", sources["core/commands/__init__.py"])


def marked_literals(name: str, source: str) -> list[str]:
    """Each `("database", "state")` written out in `source` (a tuple, list or set)."""
    return [
        f"{name}:{node.lineno}"
        for node in ast.walk(parsed(source))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set))
        and sorted(repr(e.value) for e in node.elts if isinstance(e, ast.Constant))
        == ["'database'", "'state'"]
        and len(node.elts) == len(["database", "state"])
    ]


def test_the_marked_components_are_the_targets_own_answer() -> None:
    from flywall.core.targets import registry

    assert [c for c in registry.TARGETS if registry.marked(c)] == ["database", "state"]
    repeated = (
        [hit for name, source in sorted(sources.items()) for hit in marked_literals(name, source)]
        if (sources := our_sources())
        else []
    )
    assert repeated == []


def test_a_repeated_marked_literal_is_found() -> None:
    source = "def f(c):\n    return c in {'state', 'database'}\n"
    assert marked_literals("m", source) == ["m:2"]
