"""The status memo (flywall.cli.statusmemo) answers exactly what a fresh status would.

Each test first lets a memo be written (the inputs must be older than the racy window, so
it waits until one is), then changes one input and demands that the memoized fast path
prints byte for byte what click prints (FLYWALL_NO_FAST_PATH=1, which neither reads nor
writes a memo). The memo is written by the `status` command, read by flywall.cli.fast,
each run a process of its own (forked by tests/forkserver.py: the start-up itself is
test_fastpath's).
Every change here alters the output, so dropping its input from the memo's key makes the
memo answer the old output and the test fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import apsw
import forkserver
import memochanges
import pytest
from conftest import FLYWALL, Appliance, create_table_migration
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torture import examples
from waiting import past_the_racy_window

from flywall.cli import statusmemo


def run(app: Appliance, *args: str, slow: bool = False, cwd: Path | None = None, env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLYWALL_")}
    environ.update(env or {})
    if slow:
        environ["FLYWALL_NO_FAST_PATH"] = "1"
    root = "." if cwd is not None else str(app.root)
    p = forkserver.run(
        [FLYWALL, "migration", "--root", root, "status", *args],
        env=environ,
        cwd=cwd,
        timeout=60,
        text=False,
    )
    return p.stdout, p.stderr, p.returncode


def memo_file(app: Appliance, args: tuple[str, ...] = ()) -> Path:
    variant = "status" + ("-v" if "-v" in args else "") + ("-j" if "--json" in args else "")
    return app.root / "var/cache/flywall" / f"{variant}.memo"


def identity(path: Path) -> tuple[int, ...] | None:
    try:
        s = path.stat()
    except FileNotFoundError:
        return None
    return (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def memo_answer(app: Appliance, *args: str, cwd: Path | None = None, env=None):
    """What a status run as `run` runs it would answer from the memo now; None: no memo.

    The same lookup, in this process: same interpreter, same FLYWALL_* (none, the
    autouse fixture removes them), same working directory.
    """
    assert not env, "memo_answer knows no environment"
    variant = memo_file(app, args).name.removesuffix(".memo")
    with contextlib.chdir(cwd or Path.cwd()):
        hit = statusmemo.lookup("." if cwd is not None else str(app.root), None, variant)
    return None if hit is None else (hit[0].encode(), hit[1].encode(), hit[2])


def memoize(app: Appliance, *args: str, **kw) -> None:
    """Run status until a memo for the current inputs exists (they must age past the window)."""
    deadline = time.monotonic() + 20
    while memo_answer(app, *args, **kw) is None:
        assert time.monotonic() < deadline, "no memo was ever written"
        run(app, *args, **kw)  # its start-up alone usually outlasts the racy window
        if memo_answer(app, *args, **kw) is None:
            past_the_racy_window(app.root)


def assert_memo_hit_same(app: Appliance, *args: str, **kw) -> tuple[bytes, bytes, int]:
    """A memo is written, and what it answers is what click says (and what status says)."""
    memoize(app, *args, **kw)
    answer = memo_answer(app, *args, **kw)
    quick = run(app, *args, **kw)
    slow = run(app, *args, slow=True, **kw)
    assert answer == quick == slow
    return quick


@pytest.fixture(autouse=True)
def _no_flywall_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("FLYWALL_")]:
        monkeypatch.delenv(name)


def assert_same(app: Appliance, *args: str, **kw) -> tuple[bytes, bytes, int]:
    quick = run(app, *args, **kw)
    slow = run(app, *args, slow=True, **kw)
    assert quick == slow
    return quick


@pytest.fixture
def box(appliance: Appliance) -> Appliance:
    """Three migrations, two applied."""
    for i, table in enumerate(("hosts", "zones", "rules"), start=1):
        create_table_migration(appliance, f"20240101000{i}", table)
    appliance.migrate("202401010002")
    return appliance


def _config(app: Appliance) -> None:
    app.configure('current_version = "202401010002"\n')


def _migrate(app: Appliance) -> None:
    app.cli("migrate")  # refused after some other changes (drift, an edit): then a no-op


def _force(app: Appliance) -> None:
    """A journal-only change by flywall: no migration runs, state.db is not written.

    Unless an earlier step ("journal") applied 202401010003: forcing it to failed then
    also removes its marker from state.db (`Engine.force_marker`).
    """
    state = identity(app.state_db)
    marked = _marked(app, "202401010003")
    app.cli("force", "--version", "202401010003", "--state", "failed", "--reason", "test")
    if not marked:
        assert identity(app.state_db) == state


def _marked(app: Appliance, version: str) -> bool:
    """True if state.db holds `version`'s marker (read without changing the file)."""
    if not app.state_db.exists():
        return False
    with contextlib.closing(apsw.Connection(str(app.state_db))) as db:
        query = "SELECT count(*) FROM flywall_migration_markers WHERE version = ?"
        return bool(db.execute(query, (version,)).fetchall()[0][0])


def _journal_replaced(app: Appliance) -> None:
    """The journal's bytes replaced in place by another process (no lock, no state.db)."""
    other = app.root.with_name(app.root.name + "-other")
    shutil.copytree(app.root, other)
    Appliance(other).cli(
        "force", "--version", "202401010003", "--state", "failed", "--reason", "elsewhere"
    )
    assert not Path(f"{other / 'var/lib/flywall/migration-journal.db'}-wal").exists()
    shutil.copyfile(other / "var/lib/flywall/migration-journal.db", app.journal)
    shutil.rmtree(other)


def _add(app: Appliance) -> None:
    create_table_migration(app, "202401010004", "zones2")


def _remove(app: Appliance) -> None:
    (app.migrations_dir / "202401010003_create_rules.sql").unlink()


def _state_db_gone(app: Appliance) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{app.state_db}{suffix}").unlink(missing_ok=True)


CHANGES = {
    "config": _config,
    "journal": _migrate,
    "journal only": _force,
    "journal replaced": _journal_replaced,
    "migration added": _add,
    "migration removed": _remove,
    "migration edited": memochanges.edit_same_size,
    "state.db schema": memochanges.outsider_table,
    "state.db marker": memochanges.marker_deleted,
    "state.db removed": _state_db_gone,
}


@pytest.mark.parametrize("flags", [(), ("-v",), ("--json",), ("-v", "--json")])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_input_is_never_answered_from_the_memo(box, change, flags):
    before = assert_memo_hit_same(box, *flags)
    CHANGES[change](box)
    after = assert_same(box, *flags)
    if change != "migration edited" or "-v" in flags:  # only the rows show an edit
        assert after != before, "the change must show, or this test proves nothing"


def test_a_change_only_in_the_journal_wal_is_seen(box):
    """The main journal file stays as it was (a reader keeps the WAL from checkpointing).

    (The memo is written while no -wal exists: opened as root, SQLite chowns an existing
    -wal, which sets its ctime, so a -wal that stays around keeps the memo from being used.)
    """
    before = assert_memo_hit_same(box)
    main = identity(box.journal)
    reader = apsw.Connection(str(box.journal))
    reader.execute("SELECT count(*) FROM events").fetchall()
    p = box.cli("force", "--version", "202401010003", "--state", "failed", "--reason", "test")
    assert p.returncode == 0, p.stderr
    assert identity(box.journal) == main, "the change must be in the -wal only"
    assert assert_same(box) != before
    reader.close()


def test_a_change_only_in_the_state_db_wal_is_seen(box):
    before = assert_memo_hit_same(box)
    main = identity(box.state_db)
    reader = apsw.Connection(str(box.state_db))
    reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
    writer = apsw.Connection(str(box.state_db))
    writer.execute("CREATE TABLE outsider (x)")
    writer.close()
    assert identity(box.state_db) == main, "the change must be in the -wal only"
    after = assert_same(box)
    assert b"DRIFT" in after[0]
    assert after != before
    reader.close()


def test_a_held_lock_is_never_answered_from_the_memo(box):
    before = assert_memo_hit_same(box)
    lock = box.root / "var/lib/flywall/migration-journal.db.lock"
    with lock.open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        after = assert_same(box)
    assert b"running" in after[0]
    assert after != before


def test_the_command_line_and_working_directory_are_part_of_the_key(box, tmp_path):
    """The same memo file, reached as --root . from a copy: its own paths, not the memo's."""
    assert_memo_hit_same(box, cwd=box.root)
    copy = tmp_path / "copy"
    shutil.copytree(box.root, copy, symlinks=True)
    moved = Appliance(copy)
    out = assert_same(moved, cwd=copy)
    assert str(copy).encode() in out[0]


def test_an_environment_variable_is_part_of_the_key(box):
    assert_memo_hit_same(box)
    memo = memo_file(box)
    before = identity(memo)
    run(box, env={"FLYWALL_SOMETHING": "1"})
    assert identity(memo) != before  # a miss: answered afresh and memoized again


def test_drift_is_memoized_with_its_exit_code(box):
    memochanges.outsider_table(box)
    out = assert_memo_hit_same(box)
    assert out[2] == 4
    assert b"DRIFT" in out[0]


def test_no_memo_with_a_device_key(box):
    key = box.root / "etc/flywall/device.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    box.configure('device_key_file = "device.key"\n')
    past_the_racy_window(box.root)  # old enough: only the rule under test refuses a memo
    for _ in range(3):
        assert_same(box)
    assert not memo_file(box).exists()


def test_no_memo_while_a_migration_is_interrupted(box):
    cut = box.cli("migrate", env={"FLYWALL_CRASH_AT": "database-after-commit:1"})
    assert cut.returncode == -9, cut.stderr
    past_the_racy_window(box.root)  # old enough: only the rule under test refuses a memo
    for _ in range(3):
        out = assert_same(box)
    assert b"INTERRUPTED" in out[0]
    assert not memo_file(box).exists()


def test_a_memo_hit_imports_neither_msgspec_nor_pathlib_nor_typing(box):
    """What a hit saves: the imports of a fresh answer (only what the call itself loads)."""
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from flywall.cli import fast\n"
        f"code = fast.fast(['flywall', 'migration', '--root', {str(box.root)!r}, 'status'])\n"
        "assert code == 0, code\n"
        "heavy = ('msgspec', 'pathlib', 'typing', 'apsw', 'click', 'flywall.core.commands')\n"
        "print(sorted(set(heavy) & (set(sys.modules) - before)), file=sys.stderr)\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLYWALL_")}
    python = Path(FLYWALL).read_text().splitlines()[0].removeprefix("#!")  # as the script runs
    for _ in range(3):  # a helper editing the (editable) sources meanwhile makes a miss
        assert_memo_hit_same(box)
        p = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, env=environ, check=False
        )
        assert p.returncode == 0, p.stderr
        if p.stderr.strip() == "[]":
            return
    assert p.stderr.strip() == "[]"


@pytest.mark.parametrize("point", ["status-memo-before-replace", "status-memo-after-replace"])
def test_a_kill_while_writing_the_memo_costs_nothing_but_the_memo(box, point):
    past_the_racy_window(box.root)  # old enough inputs: this run writes a memo
    cut = run(box, env={"FLYWALL_CRASH_AT": point})
    assert cut[2] == -9
    assert memo_file(box).exists() == (point == "status-memo-after-replace")
    _add(box)
    assert_same(box)
    assert_memo_hit_same(box)


def test_a_damaged_memo_is_ignored(box):
    before = assert_memo_hit_same(box)
    memo = memo_file(box)
    data = bytearray(memo.read_bytes())
    data[-2] ^= 1  # in the output text
    memo.write_bytes(bytes(data))
    assert assert_same(box) == before


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=64, max_size=64),
    code=st.integers(0, 255),
    files=st.lists(st.text(min_size=1).filter(lambda s: "\0" not in s), max_size=5),
    dirs=st.lists(st.text(min_size=1).filter(lambda s: "\0" not in s), max_size=3),
    lock=st.text(min_size=1).filter(lambda s: "\0" not in s),
    text=st.text(),
    flip=st.integers(0, 10_000),
)
def test_the_memo_format_round_trips_and_detects_damage(key, code, files, dirs, lock, text, flip):
    def same(path: str) -> str:
        return os.fsdecode(os.fsencode(path))

    data = statusmemo._encode(key, code, files, dirs, lock, text)
    decoded = statusmemo._decode(data)
    assert decoded == (
        key,
        code,
        [same(f) for f in files],
        [same(d) for d in dirs],
        same(lock),
        text,
    )
    damaged = bytearray(data)
    damaged[flip % len(data)] ^= 0x40
    assert statusmemo._decode(bytes(damaged)) is None
    assert statusmemo._decode(data[: flip % len(data)]) is None


TICK_NS = 10_000_000  # Linux's coarse clock lags by at most one tick: 10 ms at HZ=100


@settings(max_examples=examples(300, 1000), deadline=None)
@given(
    began=st.integers(10**10, 2**62),
    age=st.integers(-(10**9), 4 * 10**9),
    gran=st.sampled_from([1, 100, 10**6, 10**7, 10**9, 2 * 10**9]),
)
def test_an_identity_is_trusted_only_if_any_later_change_shows(began, age, gran):
    """Not racy => a change after `began` gets a later ctime, whatever the granularity.

    Such a change happens at t >= began, and is stamped with the coarse clock truncated to
    the granularity: > began - TICK_NS - gran. So it shows if ctime <= began - TICK_NS - gran.
    """
    ctime = began - age
    ctime -= ctime % gran  # a timestamp a filesystem of that granularity can hold
    stat = SimpleNamespace(st_ctime_ns=ctime, st_mtime_ns=ctime)
    if not statusmemo._racy(stat, began):  # type: ignore[arg-type]
        assert ctime <= began - TICK_NS - gran


@pytest.mark.parametrize("change", ["config", "migration added", "state.db schema"])
def test_an_input_changed_while_status_reads_is_not_memoized(box, change, monkeypatch, capsys):
    """The racy rule: changed after the answer was computed, before its identities were taken.

    The identity taken afterwards is the new file's, the answer the old one's: only the
    change's recent ctime keeps that answer out of the memo.
    """
    from click.testing import CliRunner

    from flywall.cli.main import main
    from flywall.core import commands

    past_the_racy_window(box.root)  # every input old enough
    status = commands.status

    def status_then_change(*args, **kw):
        report = status(*args, **kw)
        CHANGES[change](box)
        return report

    monkeypatch.setattr(commands, "status", status_then_change)
    result = CliRunner().invoke(main, ["migration", "--root", str(box.root), "status"])
    assert result.exit_code in (0, 4), result.output
    monkeypatch.setattr(commands, "status", status)
    capsys.readouterr()
    assert memo_answer(box) in (None, run(box, slow=True))


_STEPS = st.lists(st.sampled_from(sorted(CHANGES)), min_size=1, max_size=3, unique=True)


@settings(
    max_examples=examples(4, 6),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=_STEPS, flags=st.sampled_from([(), ("-v",), ("--json",)]))
@example(steps=["journal", "journal only"], flags=())  # forcing an applied one: state.db too
def test_any_sequence_of_changes_reads_as_click_reads_it(tmp_path_factory, steps, flags):
    app = Appliance(tmp_path_factory.mktemp("memo") / "appliance")
    app.configure()
    for i, table in enumerate(("hosts", "zones", "rules"), start=1):
        create_table_migration(app, f"20240101000{i}", table)
    app.migrate("202401010002")
    for step in steps:
        assert_memo_hit_same(app, *flags)
        CHANGES[step](app)
        assert_same(app, *flags)


def test_every_listed_file_is_keyed(tmp_path, monkeypatch):
    """In process: any change to any file or directory entry the memo lists is a miss."""
    monkeypatch.delenv("FLYWALL_NO_STATUS_MEMO", raising=False)
    root = tmp_path / "root"
    (root / "etc/flywall").mkdir(parents=True)
    inputs = [root / f"f{i}" for i in range(3)]
    folder = root / "dir"
    folder.mkdir()
    for path in [*inputs, folder / "a", folder / "b"]:
        path.write_text("x")
    past = time.time_ns() + 10**9  # every input is old enough relative to this

    def store() -> bool:
        return statusmemo.store(
            str(root),
            None,
            "status",
            began_ns=past + 3 * 10**9,
            files=[str(p) for p in inputs],
            dirs=[str(folder)],
            lock=str(root / "lock"),
            text="answer\n",
            code=0,
        )

    changes = [
        lambda: inputs[0].write_text("y"),
        inputs[1].unlink,
        lambda: inputs[2].chmod(0o600),
        lambda: (folder / "a").write_text("z"),
        lambda: (folder / "c").write_text("x"),
        lambda: (folder / "b").rename(folder / "d"),
    ]
    for change in changes:
        assert store()
        assert statusmemo.lookup(str(root), None, "status") == ("answer\n", "", 0)
        change()
        assert statusmemo.lookup(str(root), None, "status") is None
    memo = statusmemo._decode(Path(statusmemo.memo_path(str(root), "status")).read_bytes())
    assert memo is not None
    listed = set(memo[2])
    for module in ("flywall.cli.statusmemo", "flywall.core.runtime.crash", "blake3"):
        assert sys.modules[module].__file__ in listed, module


def test_a_fresh_memo_lists_the_code_that_answered(box):
    memoize(box)
    memo = statusmemo._decode(memo_file(box).read_bytes())
    assert memo is not None
    names = {Path(f).name for f in memo[2]}
    assert {"render.py", "projection.py", "drift.py", "fast.py"} <= names
    # the commands API is a package since the reshape: its __init__.py answered
    assert any(Path(f).parts[-3:] == ("core", "commands", "__init__.py") for f in memo[2])
    journal = str(box.journal)
    assert {journal, journal + "-wal", str(box.state_db), str(box.state_db) + "-wal"} <= set(
        memo[2]
    )
    assert memo[3] == [str(box.migrations_dir)]


def test_the_memo_is_for_its_user_only(box):
    """Mode 0600, and the user is in the key: nobody else is answered from it."""
    assert_memo_hit_same(box)
    assert memo_file(box).stat().st_mode & 0o777 == 0o600
    context = statusmemo._context(str(box.root), None, "status")
    assert repr((os.geteuid(), os.getegid(), sorted(os.getgroups()))).encode() in context


def test_a_memo_of_another_version_is_not_answered(box):
    """A memo sealed by another memo format (a release ago) is a miss, not an answer."""
    from flywall.core.appliance.caches import Cache

    memoize(box)
    body = statusmemo.MEMO.unseal(memo_file(box).read_bytes())
    assert body is not None
    older = Cache("status memo", statusmemo.MEMO.format_version - 1, point="status-memo")
    memo_file(box).write_bytes(older.seal(body))
    assert memo_answer(box) is None
    # Negative control: the same body sealed under the current version is answered.
    memo_file(box).write_bytes(statusmemo.MEMO.seal(body))
    assert memo_answer(box) is not None
