"""The writing commands' bodies, without click.

The click commands and the fast entry point (`flywall.cli.fast`) both call these, so
`migrate`, `rollback` and `backup create` behave the same whichever way they were started.

`obj` is what the `migration` group collects: {"root", "config", "traceback"}.
"""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from flywall.cli.render import ProgressLine
    from flywall.core.commands import Workspace
    from flywall.core.commands.reports import DryRunReport


def workspace(obj: dict[str, Any]) -> Workspace:
    """The appliance the `migration` group's options name."""
    from flywall.core.commands import Workspace

    show_warnings()
    ws = Workspace.load(obj["root"], obj["config"])
    ws.lock_wait = obj.get("wait") or 0.0  # --wait SECONDS, on writing commands
    return ws


def hooks(events: str | None, as_json: bool, *, progress: bool = False) -> dict[str, Any]:
    """Return the engine callbacks: JSON lines, or human progress on stderr.

    With `progress` and stderr a terminal, a batched state migration also shows a progress
    line (render.ProgressLine), erased before any other line is printed.
    """
    from flywall.cli.render import ProgressLine, echo, emit_json
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
                echo(f"{verb} {row.migration} {slug}", err=True)
            case ev.MigrationFailed(phase="interrupted"):
                pass  # the run's one FAILED line says it
            case ev.MigrationFailed(error_type=kind, message=message):
                echo(f"  failed: {kind}: {message}", err=True)
            case ev.Recovered(decision=decision):
                echo(f"recovered {row.migration}: {decision}", err=True)

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


def migrate(
    obj: dict[str, Any],
    *,
    target: str | None,
    dry_run: bool,
    accept_drift: bool,
    as_json: bool,
    events: str | None,
    no_progress: bool = False,
) -> None:
    """`migrate`: apply pending migrations, recovering any interrupted run first."""
    from flywall.cli import render
    from flywall.core import commands

    ws = workspace(obj)
    rehearsal = commands.dry_run_if_wanted(
        ws, asked=dry_run, target=target, accept_drift=accept_drift, **hooks(events, as_json)
    )
    if rehearsal is not None:
        _show_dry_run(rehearsal, as_json, events)
        return
    report = commands.migrate(
        ws,
        target=target,
        accept_drift=accept_drift,
        **hooks(events, as_json, progress=not no_progress),
    )
    if events is None:
        render.emit_json(report) if as_json else render.run(report)


def _show_dry_run(report: DryRunReport, as_json: bool, events: str | None) -> None:
    """`migrate --dry-run` (or `dry_run = true`): exit 1 when a migration failed."""
    from flywall.cli import render
    from flywall.core.commands import EXIT_MIGRATION_FAILED

    if events is None:
        render.emit_json(report) if as_json else render.dry_run(report)
    if not report.ok:
        sys.exit(EXIT_MIGRATION_FAILED)


def rollback(
    obj: dict[str, Any],
    *,
    version: str | None,
    steps: int | None,
    to: str | None,
    yes: bool,
    accept_drift: bool,
    as_json: bool,
    events: str | None,
    no_progress: bool = False,
) -> None:
    """`rollback`: VERSION, the newest --steps N, or everything after --to VERSION."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.rollback(
        workspace(obj),
        version=version,
        steps=steps,
        to=to,
        accept_drift=accept_drift,
        yes=yes,
        **hooks(events, as_json, progress=not no_progress),
    )
    if events is None:
        render.emit_json(report) if as_json else render.run(report)


def backup_create(obj: dict[str, Any], *, verify: bool, as_json: bool) -> None:
    """`backup create`: back up every target now; exit 4 if a copy does not match."""
    from flywall.cli.render import echo, emit_json
    from flywall.core import commands
    from flywall.core.commands import EXIT_VALIDATION

    row = commands.backup_create(workspace(obj), verify=verify)
    if as_json:
        emit_json(row)
    else:
        check = {True: "ok", False: "CORRUPT", None: "not verified"}[row.ok]
        echo(
            f"created backup {row.backup_id} ({row.size} bytes: {', '.join(row.items)}); "
            f"check {check}"
        )
    if row.ok is False:
        sys.exit(EXIT_VALIDATION)


# -- around every writing command: ^C and SIGTERM end the run ------------------------------


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


def interruptible(run: Callable[[], Any]) -> Any:
    """Run a writing command; SIGINT and SIGTERM end it as failed (interrupted).

    RunInterrupted: one FAILED line, exit 130 or 143; the core does not deliver after it,
    so ^C is not held up by a dead channel (the notice waits in the journal).
    """
    from flywall.core import commands
    from flywall.core.commands import RunInterrupted

    try:
        with commands.ending_runs():
            return run()
    except KeyboardInterrupt as e:  # outside a run's steps (loading, recovery...)
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        raise RunInterrupted(f"interrupted by {name}", signum) from e


# -- errors -----------------------------------------------------------------------------------


def error_exit_code(error: Exception, traceback: bool) -> int | None:
    """Report a user-caused error as one line (and JSON with --json); return its exit code.

    None: not an error a user can cause (or --traceback): the caller re-raises it.
    """
    from flywall.core.commands import FlywallError

    if not isinstance(error, FlywallError) or traceback:
        return None
    code = error.exit_code
    from flywall.cli.render import echo, emit_json

    message = str(error) + _damage_hint(error)
    if "--json" in sys.argv:
        emit_json({"error": message, "exit_code": code})
    echo(f"FAILED: {message}", err=True)
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
