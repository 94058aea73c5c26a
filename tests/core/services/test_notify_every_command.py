"""Issue 16.20: every writing command delivers notices, from both faces, through the core.

The list of writing commands is not typed here by hand alone: it is checked against every
`Engine(ws, "command")` the package opens (the one place delivery runs) and every CLI
command that takes `--wait` (the writer lock), so a new writing command without a case
here fails `test_every_writing_command_has_a_case`.
"""

from __future__ import annotations

import ast
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import click
import pytest
from apiserver import serving
from conftest import FLYWALL, Appliance, create_table_migration, hold_lock_migration
from test_notify import PASSWORD, SmtpServer, Webhook, free_port

import flywall.core
from flywall.cli.main import migration
from flywall.core import commands
from flywall.core.services import rescue

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

V1 = "202401010001"
REHEARSALS = {"migrate --dry-run", "test"}  # runs on copies: nothing to tell anyone


def settings(
    app: Appliance, *, webhook_url: str | None = None, smtp_port: int | None = None
) -> None:
    """Start and complete notices on, to the given channels; a 10-minute confirm window."""
    channels = [c for c, on in (("email", smtp_port), ("slack", webhook_url)) if on]
    lines = [
        "notify_on_start = true",
        "notify_on_complete = true",
        'confirm_within = "10m"',
        "notification_channels = [" + ", ".join(f'"{c}"' for c in channels) + "]",
    ]
    if smtp_port:
        creds = app.root / "etc/flywall/smtp.credentials"
        creds.write_text(f"flywall {PASSWORD}\n", encoding="utf-8")
        creds.chmod(0o600)
        lines += [
            "email {",
            '  host = "127.0.0.1"',
            f"  port = {smtp_port}",
            '  to = ["ops@example.test"]',
            '  credentials_file = "smtp.credentials"',
            "}",
        ]
    if webhook_url:
        lines += ["slack {", f'  webhook_url = "{webhook_url}"', "}"]
    app.configure("\n".join(lines) + "\n")


# -- each writing command: what to set up first, then the command line ---------------------


def _migrated(app: Appliance) -> None:
    create_table_migration(app, V1, "hosts")
    app.migrate()  # setup: in this process (the command under test runs as the CLI)


def _interrupted(app: Appliance) -> None:
    create_table_migration(app, V1, "hosts")
    cut = app.cli("migrate", env={"FLYWALL_CRASH_AT": "after-MigrationStarted"})
    assert cut.returncode == -9, cut.stderr


def _backed_up(app: Appliance) -> str:
    _migrated(app)
    return commands.backup_create(app.workspace()).backup_id


def _two_backups(app: Appliance) -> None:
    _backed_up(app)
    commands.backup_create(app.workspace())


def _edited(app: Appliance) -> None:
    path = create_table_migration(app, V1, "hosts")
    app.migrate()
    path.write_text(path.read_text(encoding="utf-8") + "-- a comment\n", encoding="utf-8")


CASES: dict[str, Callable[[Appliance], list[str]]] = {
    "migrate": lambda app: (create_table_migration(app, V1, "hosts"), ["migrate"])[1],
    "rollback": lambda app: (_migrated(app), ["rollback", V1])[1],
    "recover": lambda app: (_interrupted(app), ["recover"])[1],
    "confirm": lambda app: (_migrated(app), ["confirm"])[1],
    "backup create": lambda _app: ["backup", "create"],
    "backup restore": lambda app: ["backup", "restore", _backed_up(app), "--yes"],
    "backup prune": lambda app: (_two_backups(app), ["backup", "prune", "--keep", "1"])[1],
    "force": lambda app: (
        create_table_migration(app, V1, "hosts"),
        ["force", "--version", V1, "--state", "applied", "--reason", "applied by hand"],
    )[1],
    "repair": lambda app: (_edited(app), ["repair", V1, "--reason", "comment added"])[1],
    "journal recover-from-backup": lambda app: [
        "journal",
        "recover-from-backup",
        _backed_up(app),
        "--yes",
        "--force",
    ],
}
"""Command (as it names its run) → set-up, returning the arguments that run it."""


def engine_commands() -> set[str]:
    """Every run name the package opens an Engine for: where delivery happens."""
    names: set[str] = set()
    package = Path(flywall.core.__file__).parent.parent
    for path in (p for face in ("core", "api", "cli") for p in (package / face).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "Engine"
                and len(node.args) >= 2  # (workspace, command)
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(node.args[1].value)
    return names


def cli_writers(group: click.Group = migration, prefix: str = "") -> set[str]:
    """Every CLI command taking `--wait`: the ones that take the writer lock."""
    found: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= cli_writers(command, f"{prefix}{name} ")
        elif any("--wait" in p.opts for p in command.params):
            found.add(prefix + name)
    return found


# Runs journaled without an Engine: the recovery of a damaged journal cannot open one (the
# engine reads the journal it replaces), so it journals its run and delivers itself.
OTHER_RUNS = {rescue.COMMAND_NAME}


def test_every_writing_command_has_a_case() -> None:
    assert (engine_commands() | OTHER_RUNS) - REHEARSALS == set(CASES)
    assert cli_writers() <= set(CASES)


@pytest.mark.parametrize("command", sorted(CASES))
def test_every_writing_command_delivers_its_notices(
    command: str, appliance: Appliance, tmp_path: Path
) -> None:
    appliance.configure('confirm_within = "10m"\n')  # as `settings`, without a channel yet
    args = CASES[command](appliance)
    hook = Webhook()
    smtp = SmtpServer(free_port(), password=PASSWORD)
    smtp.start()
    try:
        settings(appliance, webhook_url=hook.url, smtp_port=smtp.port)
        run = appliance.cli(*args)
        assert run.returncode == 0, run.stderr
        texts, subjects = hook.texts(), smtp.subjects()
    finally:
        hook.close()
        smtp.stop()

    head = f"] {command} "
    assert [t.split(" (run")[0].split(head)[-1] for t in texts if head in t] == [
        "started",
        "completed",
    ], texts
    assert [s.split(" (run")[0].split(head)[-1] for s in subjects if head in s] == [
        "started",
        "completed",
    ], subjects
    assert "warning" not in run.stderr


def test_the_apis_confirm_and_apply_deliver(appliance: Appliance, tmp_path: Path) -> None:
    hook = Webhook()
    try:
        settings(appliance, webhook_url=hook.url)
        create_table_migration(appliance, V1, "hosts")
        with serving(appliance, tmp_path / "serve.log") as server:
            run_id = server.client.post("/api/migrations/apply", json={}).json()["run_id"]
            assert server.wait_run(run_id)["state"] == "completed"
            confirmed = server.client.post("/api/migrations/confirm")
            assert confirmed.status_code == 200, confirmed.text
        texts = [t.split(" (run")[0].split("] ")[-1] for t in hook.texts()]
    finally:
        hook.close()

    assert texts == ["migrate started", "migrate completed", "confirm started", "confirm completed"]


def test_the_start_notice_arrives_while_the_run_still_runs(
    appliance: Appliance, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    hold_lock_migration(appliance, V1, started, release)
    hook = Webhook()
    try:
        settings(appliance, webhook_url=hook.url)
        command = [FLYWALL, "migration", "--root", str(appliance.root), "migrate"]
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not (started.exists() and hook.posts) and time.monotonic() < deadline:
                assert run.poll() is None, run.communicate()
                time.sleep(0.02)
            during = hook.texts()  # the migration still holds the run open here
        finally:
            release.touch()
            _, err = run.communicate(timeout=60)
        after = hook.texts()
    finally:
        hook.close()

    assert run.returncode == 0, err
    assert [t.split(" (run")[0].split("] ")[-1] for t in during] == ["migrate started"]
    assert [t.split(" (run")[0].split("] ")[-1] for t in after] == [
        "migrate started",
        "migrate completed",
    ]


# -- a dead channel never delays the run -----------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A 127.0.0.1 port that never says a word: it holds its first connection silent
    (the sender's 5 s timeout runs out) and hangs up on every later one at once.

    One silent try proves the timeout; holding all three (15 s) would prove nothing more.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = listener.accept()[0]
            except OSError:
                continue
            if held:
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_a_dead_channel_does_not_delay_the_start_of_the_run(
    appliance: Appliance, silent_port: int
) -> None:
    create_table_migration(appliance, V1, "hosts")
    settings(appliance, webhook_url=f"http://127.0.0.1:{silent_port}/services/hook")

    t0 = time.monotonic()
    run = appliance.cli("migrate", timeout=120)
    took = time.monotonic() - t0

    assert run.returncode == 0, run.stderr
    assert "warning: notification to slack failed" in run.stderr
    conn = apsw.Connection(str(appliance.journal), flags=apsw.SQLITE_OPEN_READONLY)
    at = dict(conn.execute("SELECT kind, at_ns FROM events"))
    started, first_step = at["RunStarted"], at["MigrationStarted"]
    assert (first_step - started) / 1e9 < 2  # the channel's timeout is 5 s a try
    assert at["RunFinished"] < at["NotificationFailed"]  # ... and the run ended before it
    assert took > 5  # the start notice really waited on the dead channel (then gave up)
