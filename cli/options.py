"""What every command module of the CLI shares: the group class, the options, the workspace.

Its own module so that main.py and the modules of commands (audit, boot, repair, serve) all
import it, and none of them imports another: main.py adds their commands to its groups.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from flywall.core.commands import Workspace


class Group(click.Group):
    """Turns every error a user can cause into one line and its documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a user's error becomes its line and exit code, not a traceback."""
        try:
            return super().invoke(ctx)
        except Exception as e:
            from flywall.cli.run import error_exit_code  # the fast entry point's too

            code = error_exit_code(e, traceback=bool((ctx.obj or {}).get("traceback")))
            if code is None:
                raise
            ctx.exit(code)


def workspace() -> Workspace:
    """The appliance the `migration` group's options name."""
    from flywall.cli import run

    return run.workspace(click.get_current_context().obj)


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


def hooks(events: str | None, as_json: bool) -> dict[str, Any]:
    """Return the engine callbacks: JSON lines, or human progress on stderr."""
    from flywall.cli import run

    return run.hooks(events, as_json)


def interruptible(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Run a writing command under flywall.cli.run.interruptible, as the fast path does.

    SIGINT and SIGTERM then end the run as failed (interrupted), with its exit code.
    """

    @functools.wraps(callback)
    def run_interruptible(*args: Any, **kwargs: Any) -> Any:
        from flywall.cli.run import interruptible as guarded

        return guarded(lambda: callback(*args, **kwargs))

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
