"""The entry point's two answers before click (flywall.cli.fast) are exactly click's.

It serves only the help, usage and version texts (cli/_texts.py, rendered by click) and
status memo hits; every other command line is click's. Every comparison runs the real
`flywall` script twice, once as installed, a real exec (its start-up is what is tested), and
once with FLYWALL_NO_FAST_PATH=1 (straight to click) as the reference, forked from the
fork server (a forked child answers as an exec'd one: tests/test_forkserver.py), and demands
byte-identical stdout, stderr and exit code. The memo's own soundness (what invalidates it): tests/cli/test_statusmemo.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import forkserver
import pytest
from conftest import FLYWALL, Appliance, create_table_migration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import past_the_racy_window

from flywall.cli import fast, statusmemo
from flywall.cli._texts import TEXTS
from flywall.cli.gentexts import render

PROJECT = Path(__file__).resolve().parents[2]


def run(args: list[str], *, env: dict[str, str] | None = None, slow: bool = False):
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ.pop("FLYWALL_ROOT", None)
    environ.update(env or {})
    if slow:
        environ["FLYWALL_NO_FAST_PATH"] = "1"
        with forkserver.real_exec(False):  # this file's other children are real execs
            p = forkserver.run([FLYWALL, *args], env=environ, timeout=60, text=False)
    else:
        p = subprocess.run(
            [FLYWALL, *args], capture_output=True, env=environ, timeout=60, check=False
        )
    return p.stdout, p.stderr, p.returncode


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--root ""` means the current directory: keep its caches out of the project.

    And no FLYWALL_* setting of the caller: each is part of the memo's key.
    """
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("FLYWALL_")]:
        monkeypatch.delenv(name)


def assert_same(args: list[str], env: dict[str, str] | None = None) -> tuple[bytes, bytes, int]:
    quick = run(args, env=env)
    slow = run(args, env=env, slow=True)
    assert quick == slow, f"flywall {args} env={env}"
    return quick


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Appliance:
    """Three migrations, two applied."""
    app = Appliance(tmp_path_factory.mktemp("fast") / "appliance")
    app.configure()
    for i, table in enumerate(("hosts", "zones", "rules"), start=1):
        create_table_migration(app, f"20240101000{i}", table)
    p = app.cli("migrate", "--target", "202401010002")
    assert p.returncode == 0, p.stderr
    return app


def test_texts_are_what_click_renders_now() -> None:
    """_texts.py is stale when this fails: run `make cli-texts`."""
    assert render() == TEXTS


def test_version_is_the_installed_and_declared_one() -> None:
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    expected = f"flywall-migration, version {version('flywall-migration')}\n"
    assert TEXTS[("migration", "--version")] == (expected, "", 0)
    assert version("flywall-migration") == declared


def test_the_script_runs_the_fast_entry_point() -> None:
    script = Path(FLYWALL).read_text()
    assert "from flywall.cli.fast import main" in script
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared["flywall"] == "flywall.cli.fast:main"
    assert declared["flywall-migration"] == "flywall.cli.fast:migration_main"


def test_every_text_is_looked_up() -> None:
    """fast.may_be_text spares a writer the texts' import; it must let every text through."""
    assert [args for args in TEXTS if not fast.may_be_text(args)] == []
    groups = [args[1] for args in TEXTS if len(args) == 2 and TEXTS[args][2] == 2]
    assert sorted(groups) == sorted(fast.GROUPS)
    assert not fast.may_be_text(("migration", "migrate"))
    assert not fast.may_be_text(("migration", "--root", "/", "rollback", "--steps", "1"))


def test_every_command_of_the_other_modules_joins_a_group() -> None:
    """main.py adds them by name, imported when run: none may be left out of the maps."""
    import importlib

    import click

    from flywall.cli.main import JOURNAL_COMMANDS, MIGRATION_COMMANDS

    mapped = {*MIGRATION_COMMANDS.values(), *JOURNAL_COMMANDS.values()}
    for name in ("audit", "boot", "repair", "serve"):
        found = vars(importlib.import_module(f"flywall.cli.{name}"))
        commands = {a: c for a, c in found.items() if isinstance(c, click.Command)}
        nested = {
            id(sub)
            for c in commands.values()
            if isinstance(c, click.Group)
            for sub in c.commands.values()
        }
        for attribute, command in commands.items():
            if id(command) not in nested:  # a group's subcommands come with it
                assert f"flywall.cli.{name}:{attribute}" in mapped, attribute


@pytest.mark.parametrize("args", sorted(TEXTS), ids=" ".join)
def test_every_text_is_served_as_click_serves_it(args: tuple[str, ...]) -> None:
    out, err, code = assert_same(list(args))
    assert (out.decode(), err.decode(), code) == TEXTS[args]


@pytest.mark.parametrize("columns", ["60", "79", "80", "200", "x", "0"])
def test_help_follows_the_terminal_width_like_click(columns: str) -> None:
    assert_same(["migration", "--help"], env={"COLUMNS": columns})


def test_help_under_another_program_name_is_clicks() -> None:
    link = Path(FLYWALL).with_name("flywall-renamed-for-test")
    code = f"import sys; sys.argv[0] = {str(link)!r}; from flywall.cli.fast import main; main()"
    env = {**os.environ, "COLUMNS": "80"}
    quick = subprocess.run(
        [sys.executable, "-c", code, "migration", "--help"],
        capture_output=True,
        env=env,
        check=False,
    )
    assert b"Usage: flywall-renamed-for-test migration" in quick.stdout
    assert fast.fast([str(link), "migration", "--help"]) is None


def memoized(root: str) -> None:
    """Run status until each variant's memo answers (its inputs must age past the window)."""
    deadline = time.monotonic() + 20
    for flags in ((), ("-v",), ("--json",), ("-v", "--json")):
        variant = statusmemo.variant(verbose="-v" in flags, as_json="--json" in flags)
        while statusmemo.lookup(root, None, variant) is None:
            assert time.monotonic() < deadline, "no memo was ever written"
            with forkserver.real_exec(False):  # set-up only
                forkserver.run([FLYWALL, "migration", "--root", root, "status", *flags])
            if statusmemo.lookup(root, None, variant) is None:
                past_the_racy_window(Path(root))


def status_lines(root: str) -> list[list[str]]:
    """Command lines the memo might answer, or that look like them and must not be."""
    g = ["migration", "--root", root]
    return [
        [*g, "status"],
        [*g, "status", "--json"],
        [*g, "status", "-v"],
        [*g, "status", "--verbose", "--json"],
        ["migration", f"--root={root}", "--traceback", "status", "-v", "-v"],
        [*g, "--config", f"{root}/etc/flywall/flywall.hcl", "status"],
        [*g, "status", "--bogus"],
        [*g, "status", "-vh"],
        [*g, "status", "-vj"],
        [*g, "status", "--help"],
        [*g, "status", "extra"],
        [*g, "status", "--", "-v"],
        [*g, "--bogus", "status"],
        [*g, "--traceback=1", "status"],
        ["migration", "--root", "status"],
        ["migration", "--root", "status", "status"],
        ["migration", "--root"],
        ["migration", "--root", "", "status"],
        ["migration", "--root", f"{root}/etc/flywall/flywall.hcl", "status"],
        ["migration", "--root", f"{root}/missing", "status", "--json"],
        [*g, "--config", f"{root}/etc", "status"],
        [*g, "--config", f"{root}/nope.hcl", "status", "--json"],
        [*g, "statu"],
        [*g, "list"],
        ["migration", "status", "--json"],
    ]


def test_status_memo_hits_are_served_as_click_serves_status(box: Appliance) -> None:
    memoized(str(box.root))
    argv = ["flywall", "migration", "--root", str(box.root), "status"]
    assert fast.fast(argv) == 0, "the comparisons below would meet no memo hit"
    for args in status_lines(str(box.root)):  # the first five are hits
        assert_same(args)


def test_flywall_root_from_the_environment(box: Appliance, tmp_path: Path) -> None:
    memoized(str(box.root))
    assert_same(["migration", "status"], env={"FLYWALL_ROOT": str(box.root)})
    assert_same(["migration", "status", "--json"], env={"FLYWALL_ROOT": ""})
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_same(["migration", "status"], env={"FLYWALL_ROOT": str(a_file)})
    assert_same(["migration", "--help"], env={"FLYWALL_ROOT": str(a_file)})


def test_an_edited_description_with_an_escape_is_left_to_click(
    box: Appliance, tmp_path: Path
) -> None:
    import shutil

    copy = Appliance(tmp_path / "copy")
    shutil.copytree(box.root, copy.root)
    for memo in (copy.root / "var/cache/flywall").glob("*.memo"):  # the box's, if any
        memo.unlink()
    create_table_migration(copy, "202401010009", "later")
    path = copy.migrations_dir / "202401010009_create_later.sql"
    path.write_text(path.read_text().replace("-- Create later.", "-- \x1b[31mred\x1b[0m"))
    past_the_racy_window(copy.root)  # old enough to be memoized, were it not for the escape
    for _ in range(2):
        out, _, code = assert_same(["migration", "--root", str(copy.root), "status", "-v"])
    assert code == 0
    assert b"red" in out
    assert b"\x1b" not in out  # click strips escapes when stdout is a pipe
    assert not (copy.root / "var/cache/flywall/status-v.memo").exists()


TOKENS = [
    "migration",
    "status",
    "list",
    "--root",
    "ROOT",
    "--root=ROOT",
    "--config",
    "CONFIG",
    "--traceback",
    "-v",
    "--verbose",
    "--json",
    "--pending",
    "--applied",
    "-h",
    "--help",
    "--version",
    "bogus",
    "--bogus",
    "",
]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_any_command_line_of_these_words_answers_as_click(box: Appliance, words: list[str]) -> None:
    root = str(box.root)
    config = f"{root}/etc/flywall/flywall.hcl"
    args = [w.replace("ROOT", root).replace("CONFIG", config) for w in words]
    assert_same(args)


@pytest.mark.parametrize(
    "args",
    [["migration", "--version"], ["migration", "--help"], ["status"], ["status", "--json"]],
    ids=" ".join,
)
def test_the_hot_command_lines_never_import_click(box: Appliance, args: list[str]) -> None:
    if args[0] == "status":
        memoized(str(box.root))
        args = ["migration", "--root", str(box.root), *args]
    probe = (
        "import sys; from flywall.cli import fast; "
        f"code = fast.fast(['flywall', *{args!r}]); "
        "print('', code, 'click' in sys.modules, file=sys.stderr)"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert p.stderr.splitlines()[-1] == " 0 False"


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["rollback", "--steps", "1"],
        ["backup", "create"],
        ["list"],
        ["status", "--verbose", "--bogus"],
    ],
    ids=" ".join,
)
def test_every_other_command_line_is_clicks(box: Appliance, args: list[str]) -> None:
    """One command line: nothing but a text or a memo hit is answered before click."""
    memoized(str(box.root))
    assert fast.fast(["flywall", "migration", "--root", str(box.root), *args]) is None


def test_status_counts_are_the_states_list_shows(box: Appliance, tmp_path: Path) -> None:
    """status counts without building list's rows; both must agree (journal-only ones too)."""
    import collections
    import json
    import shutil

    copy = Appliance(tmp_path / "copy")
    shutil.copytree(box.root, copy.root)
    (copy.migrations_dir / "202401010001_create_hosts.sql").unlink()  # applied, file gone
    create_table_migration(copy, "202401010009", "later")
    status = json.loads(copy.cli("status", "--json").stdout)
    rows = json.loads(copy.cli("list", "--json").stdout)
    tally = collections.Counter(r["state"] for r in rows)
    assert status["counts"] == {state: tally.get(state, 0) for state in status["counts"]}
    assert sum(status["counts"].values()) == len(rows) == 4


FAILING = """\
-- Fails on purpose.
-- migrate:up
CREATE TABLE broken (id INTEGER PRIMARY KEY);
INSERT INTO no_such_table VALUES (1);
-- migrate:down
DROP TABLE broken;
"""


@pytest.fixture(scope="module")
def writer_box(tmp_path_factory: pytest.TempPathFactory) -> Appliance:
    """Two applied, one pending, and a failing one after it."""
    app = Appliance(tmp_path_factory.mktemp("writers") / "appliance")
    app.configure()
    for i, table in enumerate(("hosts", "zones", "rules"), start=1):
        create_table_migration(app, f"20240101000{i}", table)
    assert app.cli("migrate", "--target", "202401010002").returncode == 0
    app.write("202401010004_broken.sql", FAILING)
    return app


# -- the entry point's exit (no interpreter teardown), after click too ------------------------


def _main(args: list[str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run `flywall.cli.fast.main()` in a fresh interpreter, after `prelude`."""
    code = f"import sys\n{prelude}\nsys.argv = {['flywall', *args]!r}\nfrom flywall.cli.fast import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_writer_exits_with_every_sqlite_file_closed(
    writer_box: Appliance, tmp_path: Path
) -> None:
    """The fast exit skips teardown, never a close: no WAL is left beside the journal."""
    import shutil

    copy = Appliance(tmp_path / "copy")
    shutil.copytree(writer_box.root, copy.root)
    for command in (["rollback", "--steps", "1"], ["migrate", "--target", "202401010003"]):
        p = _main(["migration", "--root", str(copy.root), *command])
        assert p.returncode == 0, p.stderr
        left = sorted(f.name for f in copy.journal.parent.iterdir() if f.name.endswith("-wal"))
        assert left == [], command
    assert "applied 2 migrations" in p.stdout


def test_the_fast_exit_runs_atexit_handlers_and_keeps_the_exit_code(
    box: Appliance, tmp_path: Path
) -> None:
    import shutil

    mark = tmp_path / "atexit-ran"
    prelude = f"import atexit, pathlib\natexit.register(pathlib.Path({str(mark)!r}).touch)"
    p = _main(["migration", "--root", str(box.root), "list"], prelude)
    assert (p.returncode, mark.exists()) == (0, True)
    assert "202401010003" in p.stdout
    mark.unlink()
    copy = Appliance(tmp_path / "copy")
    shutil.copytree(box.root, copy.root)
    args = ["migration", "--root", str(copy.root), "rollback", "202401010003"]  # pending
    p = _main(args, prelude)
    clicks = run(args, slow=True)[2]
    assert (p.returncode, mark.exists()) == (clicks, True)
    assert clicks != 0
    assert p.stderr.startswith("FAILED: ")


def test_the_fast_exit_waits_for_a_thread_as_the_interpreter_would(
    box: Appliance, tmp_path: Path
) -> None:
    mark = tmp_path / "thread-done"
    prelude = (
        "import pathlib, threading, time\n"
        "def later():\n"
        "    time.sleep(0.3)\n"
        f"    pathlib.Path({str(mark)!r}).write_text('done')\n"
        "threading.Thread(target=later).start()"
    )
    p = _main(["migration", "--root", str(box.root), "list"], prelude)
    assert (p.returncode, mark.read_text()) == (0, "done")


def test_the_fast_exit_leaves_an_open_connection_to_the_normal_exit(
    box: Appliance, tmp_path: Path
) -> None:
    """A connection still open takes the normal exit, which closes (checkpoints) it."""
    db = tmp_path / "other.db"
    prelude = (
        f"import apsw\nconn = apsw.Connection({str(db)!r})\n"
        "conn.execute('PRAGMA journal_mode = WAL')\n"
        "conn.execute('CREATE TABLE t (x)')\n"
    )
    p = _main(["migration", "--root", str(box.root), "list"], prelude)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "other.db-wal").exists()
