"""The fork server (tests/forkserver.py) gives a test what a real exec gives it.

Each property is compared against a real exec of the same command line, so a difference the
fork introduces fails here rather than hiding inside a crash suite.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import forkserver
import pytest
from conftest import FLYWALL, Appliance, create_table_migration

pytestmark = pytest.mark.skipif(forkserver.EXEC, reason="FLYWALL_TEST_EXEC=1: nothing is forked")

PROCESS = """\
import json, os, signal, sys
print(json.dumps({
    "fds": sorted(os.listdir("/proc/self/fd")),
    "cwd": os.getcwd(),
    "umask": os.umask(0o22),
    "argv": sys.argv,
    "path0": sys.path[0],
    "env": sorted(os.environ),
    "pgrp": os.getpgrp() == int(os.environ["EXPECT_PGRP"]),
    "signals": {s.name: str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGPIPE,
        signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD)},
    "streams": [[s.encoding, s.errors, s.line_buffering, s.write_through, s.mode,
        type(s.buffer).__name__, s.fileno()] for s in (sys.stdin, sys.stdout, sys.stderr)],
    "stdin": sys.stdin.read(),
}))
print("to stderr", file=sys.stderr)
sys.exit(7)
"""


def both(argv: list[str], **kwargs: object) -> tuple[object, object]:
    """The same command line forked and exec'd: (forked result, exec'd result)."""
    forked = forkserver.run(argv, **kwargs)  # type: ignore[arg-type]
    with forkserver.real_exec():
        execd = forkserver.run(argv, **kwargs)  # type: ignore[arg-type]
    return forked, execd


def test_a_forked_child_has_the_process_state_an_exec_gives(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "ONLY_HERE": "1", "EXPECT_PGRP": str(os.getpgrp())}
    for key in ("LANG", "LC_ALL", "LC_CTYPE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update({k: v for k, v in os.environ.items() if k.startswith("PYTHON")})
    argv = [sys.executable, "-c", PROCESS, "an", "argument"]
    forked, execd = both(argv, env=env, cwd=tmp_path, input="on stdin\n")
    assert isinstance(forked, subprocess.CompletedProcess)
    assert isinstance(execd, subprocess.CompletedProcess)
    assert forked.returncode == execd.returncode == 7
    assert forked.stderr == execd.stderr == "to stderr\n"
    seen, expected = json.loads(forked.stdout), json.loads(execd.stdout)
    assert seen == expected
    assert seen["env"] == sorted(env)  # replaced wholesale: nothing of the server's
    assert seen["stdin"] == "on stdin\n"


def test_another_interpreter_environment_gets_a_real_exec() -> None:
    """PYTHON*, LANG and LC_* are read by the interpreter's start-up: the server's are fixed."""
    argv = [sys.executable, "-c", "import os; print(os.getppid())"]
    for changed in ({"PYTHONUNBUFFERED": ""}, {"LC_ALL": "C"}, {"PYTHONHASHSEED": "3"}):
        env = {**os.environ, **changed}
        assert not forkserver.forkable(argv, env)
        assert int(forkserver.run(argv, env=env).stdout) == os.getpid()
    assert forkserver.forkable(argv, dict(os.environ))


def test_the_cli_answers_as_the_console_script_does(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "users")
    appliance.migrate()
    base = [FLYWALL, "migration", "--root", str(appliance.root)]
    for args in (["status", "--json"], ["list"], ["--help"], ["no-such-command"], ["history"]):
        forked, execd = both([*base, *args], env={**os.environ, "COLUMNS": "100"})
        assert isinstance(forked, subprocess.CompletedProcess)
        assert isinstance(execd, subprocess.CompletedProcess)
        assert (forked.returncode, forked.stdout) == (execd.returncode, execd.stdout), args
        assert forked.stderr == execd.stderr, args


def test_a_crash_point_is_a_real_sigkill_of_the_child_and_each_child_reads_its_own(
    appliance: Appliance,
) -> None:
    create_table_migration(appliance, "202401010001", "users")
    cut = appliance.cli("migrate", env={"FLYWALL_CRASH_AT": "database-after-commit:1"})
    assert cut.returncode == -9, cut.stderr
    assert appliance.cli("recover").returncode == 0  # no crash point set: runs to its end
    probe = "from flywall.core.runtime import crash; print(crash._TARGET, crash._hits)"
    for point in ("a:2", "b"):
        env = {**os.environ, "FLYWALL_CRASH_AT": point}
        done = forkserver.run([sys.executable, "-c", probe], env=env)
        assert done.stdout.split(" ", 1)[0] == f"('{point.split(':')[0]}',", done.stderr


def test_a_timeout_kills_the_child() -> None:
    argv = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        forkserver.run(argv, timeout=1)
    pid = int(str(raised.value.stdout).split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_uncaught_exception_is_printed_and_exits_1() -> None:
    forked, execd = both([sys.executable, "-c", "raise ValueError('planted')"])
    assert isinstance(forked, subprocess.CompletedProcess)
    assert isinstance(execd, subprocess.CompletedProcess)
    assert forked.returncode == execd.returncode == 1
    assert forked.stderr.splitlines()[-1] == "ValueError: planted"
    assert forked.stderr == execd.stderr


def test_real_exec_is_a_child_of_the_test_and_fork_is_not() -> None:
    argv = [sys.executable, "-c", "import os; print(os.getppid())"]
    forked, execd = both(argv)
    assert isinstance(forked, subprocess.CompletedProcess)
    assert isinstance(execd, subprocess.CompletedProcess)
    assert int(execd.stdout) == os.getpid()
    assert int(forked.stdout) != os.getpid()


def _reads_the_environment(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in ("environ", "getenv", "environb"):
            return True
    return False


def _import_time_statements(tree: ast.Module) -> list[ast.stmt]:
    """The statements a module runs when imported (not function bodies)."""
    found: list[ast.stmt] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        stmt = todo.pop()
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            found.extend(stmt.decorator_list)  # type: ignore[arg-type]
            continue
        if isinstance(stmt, ast.ClassDef | ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(stmt, field, []))
            if isinstance(stmt, ast.If):
                found.append(ast.Expr(stmt.test))
            continue
        found.append(stmt)
    return found


def test_only_the_reloaded_modules_read_the_environment_at_import() -> None:
    """A module that reads os.environ at import would keep the server's value in every child."""
    readers = {
        name
        for name, source in forkserver.product_modules().items()
        if any(
            _reads_the_environment(stmt)
            for stmt in _import_time_statements(ast.parse(source.read_bytes()))
        )
    }
    assert readers == set(forkserver.RELOADED)


def test_the_environment_check_catches_a_planted_import_time_read() -> None:
    planted = ast.parse("import os\nLEVEL = os.environ.get('X')\ndef f():\n    os.environ\n")
    assert [type(s).__name__ for s in _import_time_statements(planted)] == ["Assign", "Import"]
    assert _reads_the_environment(_import_time_statements(planted)[0])
