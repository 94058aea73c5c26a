"""The boot memo (flywall.cli.bootmemo): `migrate` with nothing to do, answered as click would.

Every test runs the `flywall` script's entry point as a process of its own (forked by
tests/forkserver.py; the start-up itself is test_fastpath's and the imports test's). A memo is first let be written
(a quiet `migrate` whose inputs are older than the racy window), then one input changes,
and the fast path must give click's answer (FLYWALL_NO_FAST_PATH=1, which neither reads
nor writes a memo). Whether a run was a hit is seen on disk: a hit writes nothing at all,
while every `migrate` click runs rewrites the writer lock's holder line (`tree`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
from pathlib import Path

import apsw
import forkserver
import memochanges
import pytest
from conftest import FLYWALL, Appliance, create_table_migration

from flywall.cli import bootmemo, memo

LOCK = "var/lib/flywall/migration-journal.db.lock"


def run(app: Appliance, *args: str, slow: bool = False, env: dict[str, str] | None = None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLYWALL_")}
    environ.update(env or {})
    if slow:
        environ["FLYWALL_NO_FAST_PATH"] = "1"
    p = forkserver.run(
        [FLYWALL, "migration", "--root", str(app.root), "migrate", *args],
        env=environ,
        timeout=60,
        text=False,
    )
    return p.stdout, p.stderr, p.returncode


def tree(app: Appliance) -> dict[str, tuple[int, ...]]:
    """Every file and folder under the root with its identity (what a hit must not change)."""
    found = {}
    for path in [app.root, *sorted(app.root.rglob("*"))]:
        s = path.lstat()
        found[str(path)] = (s.st_ino, s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
    return found


def memo_answer(app: Appliance, *args: str) -> tuple[bytes, bytes, int] | None:
    """What `run(app, *args)` would answer from the memo now (same interpreter, no FLYWALL_*)."""
    hit = bootmemo.lookup(str(app.root), None, bootmemo.variant(as_json="--json" in args))
    return None if hit is None else (hit[0].encode(), hit[1].encode(), hit[2])


def memoize(app: Appliance, *args: str) -> None:
    """Run migrate until a memo for the current inputs exists (they must age past the window)."""
    deadline = time.monotonic() + 30
    while memo_answer(app, *args) is None:
        assert time.monotonic() < deadline, "no memo was ever written"
        run(app, *args)
        time.sleep(0.05)


def assert_hit(app: Appliance, *args: str) -> tuple[bytes, bytes, int]:
    """A memo answers, writes nothing, and says byte for byte what click says."""
    memoize(app, *args)
    before = tree(app)
    quick = run(app, *args)
    assert tree(app) == before, "a hit writes nothing"
    slow = run(app, *args, slow=True)
    assert quick == slow == memo_answer(app, *args)
    return quick


def assert_miss(app: Appliance, *args: str, env: dict[str, str] | None = None):
    """The fast path runs click and says what click says.

    Click ran if the lock's holder line was rewritten (a run took the lock) or the answer
    is not the memo's (a refusal before the lock).
    """
    lock = app.root / LOCK
    before = lock.stat().st_ctime_ns
    time.sleep(0.01)  # a later ctime, even on a coarse clock tick
    quick = run(app, *args, env=env)
    ran = lock.stat().st_ctime_ns != before
    assert ran or quick[2] != 0, "a miss: click ran and took the writer lock, or refused"
    slow = run(app, *args, slow=True, env=env)
    assert quick == slow
    return quick


@pytest.fixture(autouse=True)
def _no_flywall_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("FLYWALL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def box(appliance: Appliance) -> Appliance:
    """Three migrations, all applied, the writer lock file made by a run."""
    for i, table in enumerate(("hosts", "zones", "rules"), start=1):
        create_table_migration(appliance, f"20240101000{i}", table)
    appliance.migrate()
    return appliance


@pytest.mark.parametrize("flags", [(), ("--json",)])
def test_a_hit_is_clicks_answer_and_writes_nothing(box, flags):
    out = assert_hit(box, *flags)
    assert out[2] == 0
    assert (b"nothing_to_do" if flags else b"nothing to do") in out[0]
    events = _events(box)
    for _ in range(3):
        before = tree(box)
        assert run(box, *flags) == out
        assert tree(box) == before
    assert _events(box) == events


def _events(app: Appliance) -> int:
    """The journal's event count (read-write: a read-only connection leaves a -wal behind)."""
    with contextlib.closing(apsw.Connection(str(app.journal))) as db:
        return db.execute("SELECT count(*) FROM events").fetchall()[0][0]


def test_a_hit_imports_neither_click_nor_the_core(box):
    memoize(box)
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from flywall.cli import fast\n"
        f"code = fast.fast(['flywall', 'migration', '--root', {str(box.root)!r}, 'migrate'])\n"
        "assert code == 0, code\n"
        "heavy = ('click', 'flywall.core.commands', 'flywall.core.runtime.engine', 'apsw',\n"
        "         'msgspec', 'pathlib', 'typing')\n"
        "print(sorted(set(heavy) & (set(sys.modules) - before)), file=sys.stderr)\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLYWALL_")}
    python = Path(FLYWALL).read_text().splitlines()[0].removeprefix("#!")  # as the script runs
    p = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, env=environ, check=False
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "nothing to do\n"
    assert p.stderr.strip() == "[]"


# -- each input: a change gives click's answer ----------------------------------------


def _touch(app: Appliance) -> None:
    """Same bytes, same mtime: only the ctime tells."""
    path = app.migrations_dir / "202401010001_create_hosts.sql"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _journal_appended(app: Appliance) -> None:
    """One audit event (a dry run's), nothing else changed."""
    p = app.cli("migrate", "--dry-run")
    assert p.returncode == 0, p.stderr


def _disabled(app: Appliance) -> None:
    app.configure("enabled = false\n")


def _settings_comment(app: Appliance) -> None:
    app.settings.write_text(app.settings.read_text() + "# a comment\n")


def _flywall_hcl(app: Appliance) -> None:
    app.config.write_text(app.config.read_text() + "# edited\n")


def _stale_temp(app: Appliance) -> None:
    """What a run cut while replacing flywall.hcl leaves (recovery removes it)."""
    (app.config.parent / f".{app.config.name}.flywall-tmp").write_text("half")


def _partial_backup(app: Appliance) -> None:
    backups = app.root / "var/lib/flywall/migration-backups"
    backups.mkdir(exist_ok=True)
    (backups / ".partial-cut").mkdir()


CHANGES = {
    "migration touched": _touch,
    "migration edited": memochanges.edit_same_size,
    "state.db written": memochanges.outsider_table,
    "state.db marker": memochanges.marker_deleted,
    "journal appended": _journal_appended,
    "settings: disabled": _disabled,
    "settings: a comment": _settings_comment,
    "flywall.hcl edited": _flywall_hcl,
    "stale temp": _stale_temp,
    "partial backup": _partial_backup,
}


@pytest.mark.parametrize("flags", [(), ("--json",)])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_input_is_never_answered_from_the_memo(box, change, flags):
    assert_hit(box, *flags)
    CHANGES[change](box)
    assert_miss(box, *flags)


def test_a_new_migration_is_applied(box):
    assert_hit(box)
    create_table_migration(box, "202401010004", "later")
    out = run(box)
    assert re.fullmatch(rb"applied 1 migration \(run \S+\)\n", out[0]), out
    assert out[2] == 0
    assert run(box, slow=True) == (b"nothing to do\n", b"", 0)


def test_a_change_only_in_the_state_db_wal_is_seen(box):
    assert_hit(box)
    main = box.state_db.stat()
    reader = apsw.Connection(str(box.state_db))
    reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
    writer = apsw.Connection(str(box.state_db))
    writer.execute("DELETE FROM flywall_migration_markers WHERE version = '202401010002'")
    writer.close()
    assert box.state_db.stat().st_ctime_ns == main.st_ctime_ns, "the change must be in the -wal"
    out = assert_miss(box)
    assert out[2] == 4, out  # drift
    reader.close()


def test_a_change_only_in_the_journal_wal_is_seen(box):
    assert_hit(box)
    main = box.journal.stat()
    reader = apsw.Connection(str(box.journal))
    reader.execute("SELECT count(*) FROM events").fetchall()
    _journal_appended(box)
    assert box.journal.stat().st_ctime_ns == main.st_ctime_ns, "the change must be in the -wal"
    assert_miss(box)
    reader.close()


def test_an_environment_variable_is_part_of_the_key(box):
    assert_hit(box)
    assert_miss(box, env={"FLYWALL_SOMETHING": "1"})


def test_a_held_lock_is_never_answered_from_the_memo(box):
    assert_hit(box)
    with (box.root / LOCK).open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        quick = run(box)
        slow = run(box, slow=True)
    assert quick == slow
    assert quick[2] == 3, quick
    assert b"busy" in quick[1], quick


def test_a_live_daemon_is_never_answered_from_the_memo(box):
    """Flywall running (its pid file names a live process): the run refuses, exit 3."""
    assert_hit(box)
    run_dir = box.root / "var/run"
    run_dir.mkdir(exist_ok=True)
    with subprocess.Popen(["sleep", "60"]) as daemon:
        try:
            (run_dir / "flywall.pid").write_text(f"{daemon.pid}\n")
            out = assert_miss(box)
            assert out[2] == 3, out
            assert b"Flywall is running" in out[1], out
        finally:
            daemon.kill()


def test_the_daemon_probe(tmp_path):
    """The hit's own probe: no file or a dead pid is no daemon; anything else may be one."""
    pid_file = tmp_path / "flywall.pid"
    assert not bootmemo.daemon_may_run(str(pid_file))
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    pid_file.write_text(f"{gone.pid}\n")
    assert not bootmemo.daemon_may_run(str(pid_file))
    for text in (f"{os.getpid()}\n", "garbage\n", "0\n", ""):
        pid_file.write_text(text)
        assert bootmemo.daemon_may_run(str(pid_file)), text


def test_a_daemon_started_after_the_memo_is_probed(box, monkeypatch):
    """The pid file's identity unchanged, its process alive now: the probe alone refuses."""
    run_dir = box.root / "var/run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "flywall.pid").write_text("4194304\n")  # above Linux's pid_max: never alive
    memoize(box)
    assert memo_answer(box) is not None
    monkeypatch.setattr(bootmemo, "daemon_may_run", lambda _path: True)
    assert memo_answer(box) is None


@pytest.mark.parametrize("point", ["database-before-commit", "database-after-commit"])
def test_an_interrupted_run_is_recovered_not_answered(box, point):
    assert_hit(box)
    cut = box.cli("rollback", "--steps", "1", env={"FLYWALL_CRASH_AT": point})
    assert cut.returncode == -9, cut.stderr
    out = run(box)
    assert b"recovered 202401010003" in out[0], out
    assert out[2] == 0


def test_no_memo_with_a_device_key(box):
    key = box.root / "etc/flywall/device.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    box.configure('device_key_file = "device.key"\n')
    p = box.cli("journal", "adopt-key")
    assert p.returncode == 0, p.stderr
    time.sleep(0.5)
    for _ in range(3):
        assert run(box) == run(box, slow=True)
    assert not Path(memo.memo_path(str(box.root), "migrate")).exists()


def test_no_memo_while_a_run_awaits_confirmation(box):
    """Its window closes with the clock, not a file: the answer may change by itself."""
    box.configure('confirm_within = "1h"\n')
    create_table_migration(box, "202401010004", "later")
    p = box.cli("migrate")
    assert p.returncode == 0, p.stderr
    time.sleep(0.5)
    for _ in range(3):
        assert run(box) == run(box, slow=True)
    assert not Path(memo.memo_path(str(box.root), "migrate")).exists()


@pytest.mark.parametrize("knob", ["FLYWALL_NO_BOOT_MEMO", "FLYWALL_NO_FAST_PATH"])
def test_the_knobs_turn_it_off(box, knob):
    time.sleep(0.5)
    for _ in range(2):
        run(box, env={knob: "1"})
    assert not Path(memo.memo_path(str(box.root), "migrate")).exists()
    assert_hit(box)
    assert_miss(box, env={knob: "1"})


@pytest.mark.parametrize(
    "args",
    [
        ["migrate", "--target", "202401010003"],
        ["migrate", "--dry-run"],
        ["migrate", "--wait", "1"],
        ["migrate", "--no-progress"],
        ["migrate", "--json", "--json", "-x"],
        ["migrate", "--events", "jsonl"],
    ],
    ids=" ".join,
)
def test_only_the_plain_command_line_is_answered(box, args):
    from flywall.cli import fast

    memoize(box)
    memoize(box, "--json")
    assert fast.fast(["flywall", "migration", "--root", str(box.root), *args]) is None


@pytest.mark.parametrize("point", ["boot-memo-before-replace", "boot-memo-after-replace"])
def test_a_kill_while_writing_the_memo_costs_nothing_but_the_memo(box, point):
    time.sleep(0.3)  # old enough inputs: this run writes a memo
    cut = run(box, env={"FLYWALL_CRASH_AT": point})
    assert cut[2] == -9
    assert cut[0] == b"nothing to do\n"  # answered before the memo is written
    memo_file = Path(memo.memo_path(str(box.root), "migrate"))
    assert memo_file.exists() == (point == "boot-memo-after-replace")
    _touch(box)
    assert_miss(box)
    assert_hit(box)


def test_a_damaged_memo_is_ignored(box):
    before = assert_hit(box)
    memo_file = Path(memo.memo_path(str(box.root), "migrate"))
    data = bytearray(memo_file.read_bytes())
    data[-2] ^= 1  # in the output text
    memo_file.write_bytes(bytes(data))
    assert assert_miss(box) == before


def test_an_input_changed_while_migrate_runs_is_not_memoized(box, monkeypatch, capsys):
    """The racy rule: a change after the answer was computed, before identities were taken."""
    from click.testing import CliRunner

    from flywall.cli.main import main
    from flywall.core import commands

    time.sleep(0.3)  # every input old enough
    migrate = commands.migrate

    def migrate_then_change(*args, **kw):
        report = migrate(*args, **kw)
        create_table_migration(box, "202401010004", "later")
        return report

    monkeypatch.setattr(commands, "migrate", migrate_then_change)
    result = CliRunner().invoke(main, ["migration", "--root", str(box.root), "migrate"])
    assert result.exit_code == 0, result.output
    assert result.output == "nothing to do\n"
    capsys.readouterr()
    assert memo_answer(box) is None
    monkeypatch.setattr(commands, "migrate", migrate)
    # Negative control: the same run without the change is memoized.
    (box.migrations_dir / "202401010004_create_later.sql").unlink()
    time.sleep(0.3)
    result = CliRunner().invoke(main, ["migration", "--root", str(box.root), "migrate"])
    assert result.exit_code == 0, result.output
    assert memo_answer(box) == (b"nothing to do\n", b"", 0)


def test_a_fresh_memo_lists_what_the_run_read(box):
    memoize(box)
    found = memo.read(bootmemo.MEMO, memo.memo_path(str(box.root), "migrate"))
    assert found is not None
    _, code, files, dirs, probes, text = found
    assert (code, text) == (0, "nothing to do\n")
    journal, state = str(box.journal), str(box.state_db)
    assert {journal, journal + "-wal", state, state + "-wal", str(box.settings)} <= set(files)
    assert str(box.root / "var/run/flywall.pid") in files
    assert str(box.root / LOCK) not in files  # every writer rewrites it: taken, not stamped
    names = {Path(f).name for f in files}
    assert {"engine.py", "drift.py", "quiet.py", "bootmemo.py", "memo.py"} <= names
    assert dirs[0] == str(box.migrations_dir)
    assert probes == [str(box.root / LOCK), str(box.root / "var/run/flywall.pid")]
    assert Path(memo.memo_path(str(box.root), "migrate")).stat().st_mode & 0o777 == 0o600
