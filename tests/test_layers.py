"""The package layering a newcomer can rely on, checked by walking every module's imports.

Layers, lowest first (README "Where things live"):
- `flywall.journal` imports nothing of ours;
- `flywall.core.model` (events, lifecycle, the projection fold, the planner, errors) imports only
  the model: it is pure, so it can be read and tested without a file or a clock;
- the faces, `flywall.cli` and `flywall.api`, reach the core only through `flywall.core.commands`
  (the one API both call, with its typed reports);
- no import cycles between modules, lazy imports included;
- no face names a journal error: the workspace translates them into `FlywallError`s once
  (`core/appliance/journalfile.py`), so a face catches only those.

Imports under `if TYPE_CHECKING:` count: a type a layer names is a dependency a reader follows.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

parsed = functools.cache(ast.parse)
"""`ast.parse`, once per source: every rule, and every planted case, walks the same modules."""

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "core": "flywall.core",
    "journal": "flywall.journal",
    "cli": "flywall.cli",
    "api": "flywall.api",
}
SAMPLES = ("examples",)  # sample migrations written into a demo box: scripts, not modules

# The fast entry point answers `--help`, `--version` and memo hits (status, boot) before importing the
# core (a fleet agent runs `status` every minute): the memo finds the box and seals itself
# through these two small modules, which import nothing else of ours at module level (the
# cache helper's write, on a miss, imports fileio when the core is loaded anyway).
FAST_PATH = {
    "flywall.cli.memo": {"flywall.core.appliance.layout", "flywall.core.appliance.caches"},
    "flywall.cli.statusmemo": {"flywall.core.appliance.layout", "flywall.core.appliance.caches"},
    "flywall.cli.bootmemo": {"flywall.core.appliance.caches"},
}


def module_name(path: Path) -> str:
    """Return the dotted name `path` is installed under (DESIGN §3's folder mapping)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    name = [FOLDERS[parts[0]], *parts[1:]]
    return ".".join(name[:-1] if name[-1] == "__init__" else name)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of ours (`known`) that `path` imports, at module level or in a function.

    `from package import module` is an edge to the module alone; `from module import name`
    (a function, a class) is an edge to the module.
    """
    tree = parsed(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return (found & known) - {name}


def module_paths(root: Path = ROOT) -> dict[str, Path]:
    """Each of our modules by dotted name (sample migrations left out)."""
    return {
        module_name(path): path
        for folder in FOLDERS
        for path in sorted((root / folder).rglob("*.py"))
        if not any(s in path.parts for s in SAMPLES)
    }


def modules(root: Path = ROOT) -> dict[str, set[str]]:
    """Map each of our modules to the modules of ours it imports."""
    paths = module_paths(root)
    return {name: imports_of(path, name, set(paths)) for name, path in paths.items()}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import that crosses a layer the wrong way, as 'importer -> imported (rule)'.

    A package's `__init__` reached by `from package import module` is not counted: the
    module itself is an edge of its own.
    """
    found = []
    for importer, imported in sorted(graph.items()):
        allowed = FAST_PATH.get(importer, set())
        for target in sorted(imported - allowed):
            rule = broken_rule(importer, target)
            if rule:
                found.append(f"{importer} -> {target} ({rule})")
    return found


def broken_rule(importer: str, target: str) -> str | None:
    if under(importer, "flywall.journal") and not under(target, "flywall.journal"):
        return "the journal imports nothing of ours"
    if under(importer, "flywall.core.model") and not under(target, "flywall.core.model"):
        return "the model imports only the model"
    if under(importer, "flywall.core") and (
        under(target, "flywall.cli") or under(target, "flywall.api")
    ):
        return "the core never imports a face"
    face = under(importer, "flywall.cli") or under(importer, "flywall.api")
    if face and under(target, "flywall.core") and not under(target, "flywall.core.commands"):
        return "a face reaches the core only through flywall.core.commands"
    if face and under(target, "flywall.journal"):
        return "a face reaches the journal only through flywall.core.commands"
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:  # noqa: C901 - Tarjan's algorithm, kept whole
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_every_layer_is_kept() -> None:
    assert violations(modules()) == []


def test_no_import_cycles() -> None:
    assert cycles(modules()) == []


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        (
            "journal/planted.py",
            "from flywall.core.model import events\n",
            "the journal imports nothing",
        ),
        ("core/model/planted.py", "from flywall.journal import store\n", "the model imports only"),
        (
            "core/model/planted.py",
            "def f():\n    from flywall.core.runtime import engine\n",
            "the model imports only",
        ),
        (
            "core/runtime/planted.py",
            "from flywall.cli import render\n",
            "the core never imports a face",
        ),
        (
            "cli/planted.py",
            "from flywall.core.runtime import engine\n",
            "only through flywall.core.commands",
        ),
        ("api/planted.py", "import flywall.journal.store\n", "the journal only through"),
    ],
)
def test_a_planted_violation_is_found(
    tmp_path: Path, importer: str, source: str, expected: str
) -> None:
    """The walk is not vacuous: one bad import, planted in a copy of the tree, is reported."""
    graph = modules()
    planted = tmp_path / importer
    planted.parent.mkdir(parents=True)
    planted.write_text(source)
    name = module_name(ROOT / importer)
    graph[name] = imports_of(planted, name, set(graph))
    assert any(expected in v for v in violations(graph)), violations(graph)


def test_a_planted_cycle_is_found() -> None:
    graph = modules()
    graph["flywall.journal.store"] = graph["flywall.journal.store"] | {"flywall.cli.main"}
    assert any("flywall.journal.store" in group for group in cycles(graph))


def test_the_model_starts_the_chain_where_the_journal_does() -> None:
    """The model keeps its own copy of the chain's start hash so as to import no storage."""
    from flywall.core.model.projection import START_HASH
    from flywall.journal import GENESIS

    assert START_HASH == GENESIS


def journal_error_names() -> set[str]:
    """The journal package's own error classes (what only the workspace may catch)."""
    import flywall.journal

    return {
        name
        for name in flywall.journal.__all__
        if isinstance(cls := getattr(flywall.journal, name), type)
        and issubclass(cls, flywall.journal.JournalError)
    }


def journal_errors_named(path: Path, source: str) -> list[str]:
    """Each journal error a module names (a name, an attribute or an import), as 'path:line'."""
    names = journal_error_names()
    found = []
    for node in ast.walk(parsed(source, str(path))):
        named = (
            node.id
            if isinstance(node, ast.Name)
            else node.attr
            if isinstance(node, ast.Attribute)
            else node.name
            if isinstance(node, ast.alias)
            else None
        )
        if named in names:
            found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')} {named}")
    return found


def faces_naming_journal_errors(overrides: dict[Path, str] | None = None) -> list[str]:
    sources = {
        path: path.read_text()
        for face in ("cli", "api")
        for path in sorted((ROOT / face).rglob("*.py"))
    }
    sources.update(overrides or {})
    return [hit for path, source in sources.items() for hit in journal_errors_named(path, source)]


def test_no_face_names_a_journal_error() -> None:
    assert faces_naming_journal_errors() == []


@pytest.mark.parametrize(
    "planted",
    [
        "from flywall.core.commands import JournalError\n",
        "def f(commands, e):\n    return isinstance(e, commands.JournalCorrupt)\n",
        "try:\n    pass\nexcept JournalUnreadable:\n    pass\n",
    ],
)
def test_a_face_naming_a_journal_error_is_found(planted: str) -> None:
    path = ROOT / "api" / "planted.py"
    assert faces_naming_journal_errors({path: planted}), planted
