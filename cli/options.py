"""What every command module of the CLI shares: the group class, the options, the workspace.

Its own module so that main.py and the modules of commands (audit, boot, repair, serve) all
import it, and none of them imports another: main.py adds their commands to its groups.
Also what every writing command shares: its engine callbacks (`hooks`), ^C and SIGTERM as
a failed run (`interruptible`), and the one line a user's error becomes (`error_exit_code`).
"""

from __future__ import annotations

import functools
import signal
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from flywall.cli.render import ProgressLine
    from flywall.core.commands import Workspace


class Group(click.Group):
    """Turns every error a user can cause into one line and its documented exit code.

    `lazy` names commands of other modules ("name": "module:attribute"), imported only when
    one is run or listed: a writer does not load the commands it does not run.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, the lazy ones included."""
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command `cmd_name`, importing its module first if it is a lazy one."""
        if cmd_name not in self.commands and cmd_name in self.lazy:
            import importlib

            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a user's error becomes its line and exit code, not a traceback."""
        try:
            return super().invoke(ctx)
        except Exception as e:
            code = error_exit_code(e, traceback=bool((ctx.obj or {}).get("traceback")))
            if code is None:
                raise
            ctx.exit(code)


def workspace() -> Workspace:
    """The appliance the `migration` group's options name (and `--wait`, on writers)."""
    from flywall.core.commands import Workspace

    obj = click.get_current_context().obj
    ws = Workspace.load(obj["root"], obj["config"])
    ws.lock_wait = obj.get("wait") or 0.0  # --wait SECONDS, on writing commands
    if ws.settings.notification_channels:  # without channels nothing delivers, nor warns
        show_warnings()  # (and no command pays for importing logging)
    return ws


def show_warnings() -> None:
    """Print core's delivery warnings (flywall.core.services.notify's log) as lines on stderr.

    Delivery is the core's step after every writing command; the CLI only shows its word.
    """
    import logging

    logger = logging.getLogger("flywall.core.services.notify")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--json` to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def events_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--events jsonl` to a writing command."""
    return click.option(
        "--events",
        type=click.Choice(["jsonl"]),
        default=None,
        help="Stream every journal event as a JSON line on stdout, as it is written.",
    )(f)


def progress_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--no-progress` to a command that can run batched state migrations."""
    return click.option(
        "--no-progress",
        is_flag=True,
        help="No progress line for batched migrations (shown only when stderr is a terminal).",
    )(f)


def drift_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--accept-drift` to a writing command."""
    return click.option(
        "--accept-drift",
        is_flag=True,
        help="Run even though state.db no longer matches the journal (journaled).",
    )(f)


def _keep_wait(ctx: click.Context, _param: click.Parameter, value: float | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["wait"] = value


def wait_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--wait SECONDS` to a writing command: wait for the writer lock (as dbmate's)."""
    return click.option(
        "--wait",
        type=click.FloatRange(min=0, max=86400),
        default=None,
        expose_value=False,
        callback=_keep_wait,
        metavar="SECONDS",
        help="Wait up to SECONDS for another run's writer lock instead of exiting 3 at once.",
    )(f)


def hooks(events: str | None, as_json: bool, *, progress: bool = False) -> dict[str, Any]:
    """Return the engine callbacks: JSON lines, or human progress on stderr.

    With `progress` and stderr a terminal, a batched state migration also shows a progress
    line (render.ProgressLine), erased before any other line is printed.
    """
    from flywall.cli.render import ProgressLine, emit_json
    from flywall.core import commands
    from flywall.core.commands import ev

    if events == "jsonl":
        return {"on_event": lambda row, event: emit_json(commands.event_dict(row, event))}
    if as_json:
        return {}
    bar = ProgressLine(sys.stderr) if progress and _terminal(sys.stderr) else None

    def narrate(row: Any, event: Any) -> None:
        if bar is not None:
            _show_progress(bar, row, event)
        match event:
            case ev.MigrationStarted(direction=direction, slug=slug):
                verb = "applying" if direction == "up" else "rolling back"
                click.echo(f"{verb} {row.migration} {slug}", err=True)
            case ev.MigrationFailed(phase="interrupted"):
                pass  # the run's one FAILED line says it
            case ev.MigrationFailed(error_type=kind, message=message):
                click.echo(f"  failed: {kind}: {message}", err=True)
            case ev.Recovered(decision=decision):
                click.echo(f"recovered {row.migration}: {decision}", err=True)

    return {"on_event": narrate}


def _show_progress(bar: ProgressLine, row: Any, event: Any) -> None:
    """Draw a batch on the progress line; erase it before any line that follows it."""
    from flywall.core.commands import ev

    match event:
        case ev.BatchCommitted(rows=done, total_rows=total):
            bar.update(row.migration, done, total)
        case ev.MigrationStarted():
            bar.start()
        case (
            ev.MigrationApplied()
            | ev.MigrationFailed()
            | ev.MigrationRolledBack()
            | ev.RunFinished()
            | ev.Recovered()
        ):
            bar.clear()


def _terminal(stream: Any) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def interruptible(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Run a writing command so that SIGINT and SIGTERM end it as failed (interrupted).

    RunInterrupted: one FAILED line, exit 130 or 143; the core does not deliver after it,
    so ^C is not held up by a dead channel (the notice waits in the journal).
    """

    @functools.wraps(callback)
    def run_interruptible(*args: Any, **kwargs: Any) -> Any:
        from flywall.core import commands
        from flywall.core.commands import RunInterrupted

        try:
            with commands.ending_runs():
                return callback(*args, **kwargs)
        except KeyboardInterrupt as e:  # outside a run's steps (loading, recovery...)
            signum = getattr(e, "signum", signal.SIGINT)
            name = signal.Signals(signum).name
            raise RunInterrupted(f"interrupted by {name}", signum) from e

    return run_interruptible


def ask_or_refuse(question: str, what: str) -> None:
    """Ask; with no terminal to answer, refuse in one line naming --yes (exit 2)."""
    from flywall.core.commands import UsageError

    try:
        agreed = click.confirm(question)
    except click.Abort:
        if sys.stdin.isatty():  # Ctrl-C at the question: the person said no
            raise
        raise UsageError(f"{what}: with no terminal to answer the question, give --yes") from None
    if not agreed:
        raise click.Abort


def error_exit_code(error: Exception, traceback: bool) -> int | None:
    """Report a user-caused error as one line (and JSON with --json); return its exit code.

    None: not an error a user can cause (or --traceback): the caller re-raises it.
    """
    from flywall.core.commands import FlywallError

    if not isinstance(error, FlywallError) or traceback:
        return None
    code = error.exit_code
    from flywall.cli.render import emit_json

    message = str(error) + _damage_hint(error)
    if "--json" in sys.argv:
        emit_json({"error": message, "exit_code": code})
    click.echo(f"FAILED: {message}", err=True)
    return code


def _damage_hint(error: Exception) -> str:
    """Point a damaged journal file's error at the way out (README, "a damaged journal").

    Only a file SQLite cannot read: a broken chain may be tampering, to be looked at
    (`journal verify`, the audit export) before anything replaces it.
    """
    from flywall.core.commands import errors

    if not isinstance(error, errors.JournalDamaged):
        return ""
    return (
        "; if it is damaged, get the box back from a backup: flywall migration journal "
        "recover-from-backup BACKUP_ID --yes (backup list names them)"
    )
