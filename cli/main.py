"""The `flywall` command line: parse, call `flywall.core.commands`, render (STYLE §3).

Start-up matters (a fleet agent runs `status` every minute), so only click is imported at
module level; each command imports the core it needs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flywall.cli.options import (
    Group,
    ask_or_refuse,
    drift_option,
    events_option,
    hooks,
    interruptible,
    json_option,
    progress_option,
    wait_option,
    workspace,
)

if TYPE_CHECKING:
    from flywall.core.commands import Workspace
    from flywall.core.commands.reports import DryRunReport, RunReport, ValidationReport

EXIT_CODES = """Exit codes: 0 ok; 1 a migration failed; 2 usage or invalid input;
3 busy (another run holds the lock); 4 validation failed, drift, or tampered journal."""


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flywall-migration", prog_name="flywall")
def main() -> None:
    """Flywall appliance tools."""


# The commands of the other modules (which import only flywall.cli.options, never this
# module) join the groups by name, imported when run or listed.
_AUDIT, _BOOT, _REPAIR, _SERVE = (f"flywall.cli.{m}:" for m in ("audit", "boot", "repair", "serve"))
MIGRATION_COMMANDS = {
    "notify": _AUDIT + "notify",
    "replay": _AUDIT + "replay",
    "sign": _AUDIT + "sign",
    "install-units": _BOOT + "install_units",
    "backup": _REPAIR + "backup_group",
    "force": _REPAIR + "force",
    "repair": _REPAIR + "repair",
    "debug": _REPAIR + "debug",
    "confirm": _REPAIR + "confirm",
    "serve": _SERVE + "serve",
}
JOURNAL_COMMANDS = {
    "export": _AUDIT + "journal_export",
    "adopt-key": _AUDIT + "journal_adopt_key",
    "verify-export": _AUDIT + "journal_verify_export",
}


@main.group(cls=Group, epilog=EXIT_CODES, lazy=MIGRATION_COMMANDS)
@click.version_option(package_name="flywall-migration", prog_name="flywall-migration")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),  # a typo builds no appliance
    default="/",
    show_default=True,
    envvar="FLYWALL_ROOT",
    help="Prefix of every default path: a whole appliance can live in a folder.",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="The settings file to read [default: migration.hcl beside flywall.hcl].",
)
@click.option("--traceback", is_flag=True, hidden=True, help="Re-raise errors (debugging).")
@click.pass_context
def migration(ctx: click.Context, root: str, config: str | None, traceback: bool) -> None:
    """Crash-safe, journaled migrations of state.db, flywall.hcl and api.json."""
    ctx.obj = {
        "root": Path(root),
        "config": None if config is None else Path(config),
        "traceback": traceback,
        "given": (root, config),  # as typed: the status memo is looked up by them
    }


@migration.command()
@click.option("--verbose", "-v", is_flag=True, help="Also list every migration.")
@json_option
def status(verbose: bool, as_json: bool) -> None:
    """Show component versions, migration counts, the journal head and interruptions."""
    import time

    from flywall.cli import render, statusmemo
    from flywall.core import commands

    began_ns = time.time_ns()  # before any input is read: see statusmemo._racy
    ws = workspace()
    report = commands.status(ws, verbose=verbose)
    with render.captured() as out:
        render.emit_json(report) if as_json else render.status(report)
    text = "".join(out)
    click.echo(text, nl=False)
    code = commands.EXIT_VALIDATION if report.drift or report.broken else 0
    root, config = click.get_current_context().obj["given"]
    variant = statusmemo.variant(verbose=verbose, as_json=as_json)
    statusmemo.keep(
        root, config, variant, began_ns=began_ns, ws=ws, report=report, text=text, code=code
    )
    if code:
        sys.exit(code)


@migration.command("list")
@click.option("--pending", is_flag=True, help="Only migrations still to apply.")
@click.option("--applied", is_flag=True, help="Only applied migrations.")
@json_option
def list_(pending: bool, applied: bool, as_json: bool) -> None:
    """List migrations with their state, checksum and time applied."""
    from flywall.cli import render
    from flywall.core import commands

    rows = commands.list_migrations(workspace(), pending=pending, applied=applied)
    render.emit_json(rows) if as_json else render.migrations(rows)
    if any(r.state == "broken" for r in rows):
        sys.exit(commands.errors.EXIT_VALIDATION)


@migration.command()
@click.option("--target", metavar="VERSION", help="Stop after this migration (or schema_version).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run the plan on copies: print the SQL and diffs; change nothing but one audit event.",
)
@drift_option
@wait_option
@json_option
@events_option
@interruptible
@progress_option
def migrate(
    target: str | None,
    dry_run: bool,
    accept_drift: bool,
    as_json: bool,
    events: str | None,
    no_progress: bool,
) -> None:
    """Apply pending migrations, recovering any interrupted run first."""
    import time

    from flywall.cli import render
    from flywall.core import commands

    began_ns = time.time_ns()  # before any input is read: see memo.racy
    ws = workspace()
    rehearsal = commands.dry_run_if_wanted(
        ws, asked=dry_run, target=target, accept_drift=accept_drift, **hooks(events, as_json)
    )
    if rehearsal is not None:
        _show_dry_run(rehearsal, as_json, events)
        return
    quiet: list[bool] = []
    plain = target is None and not accept_drift and events is None and not no_progress
    report = commands.migrate(
        ws,
        target=target,
        accept_drift=accept_drift,
        on_quiet=(lambda: quiet.append(True)) if plain and _no_wait() else None,
        **hooks(events, as_json, progress=not no_progress),
    )
    if events is not None:
        return
    if not quiet:
        render.emit_json(report) if as_json else render.run(report)
        return
    _answer_quietly(report, as_json, began_ns, ws)


def _no_wait() -> bool:
    """True if `--wait` was not given (the boot memo answers only the plainest command line)."""
    return not click.get_current_context().obj.get("wait")


def _answer_quietly(report: RunReport, as_json: bool, began_ns: int, ws: Workspace) -> None:
    """Print a quiet `migrate`'s answer and keep it in the boot memo (cli/bootmemo.py)."""
    from flywall.cli import bootmemo, render

    with render.captured() as out:
        render.emit_json(report) if as_json else render.run(report)
    text = "".join(out)
    click.echo(text, nl=False)
    root, config = click.get_current_context().obj["given"]
    variant = bootmemo.variant(as_json=as_json)
    bootmemo.keep(root, config, variant, began_ns=began_ns, ws=ws, text=text)


def _show_dry_run(report: DryRunReport, as_json: bool, events: str | None) -> None:
    """`migrate --dry-run` (or `dry_run = true`): exit 1 when a migration failed."""
    from flywall.cli import render
    from flywall.core.commands import EXIT_MIGRATION_FAILED

    if events is None:
        render.emit_json(report) if as_json else render.dry_run(report)
    if not report.ok:
        sys.exit(EXIT_MIGRATION_FAILED)


@migration.command()
@click.argument("version", required=False)
@click.option("--steps", type=click.IntRange(min=1), help="Roll back the newest N applied.")
@click.option("--to", "to", metavar="VERSION", help="Roll back everything applied after VERSION.")
@click.option("--yes", is_flag=True, help="Allow a backup restore for irreversible ones.")
@drift_option
@wait_option
@json_option
@events_option
@interruptible
@progress_option
def rollback(
    version: str | None,
    steps: int | None,
    to: str | None,
    yes: bool,
    accept_drift: bool,
    as_json: bool,
    events: str | None,
    no_progress: bool,
) -> None:
    """Roll back VERSION, the newest --steps N, or everything after --to VERSION."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.rollback(
        workspace(),
        version=version,
        steps=steps,
        to=to,
        accept_drift=accept_drift,
        yes=yes,
        **hooks(events, as_json, progress=not no_progress),
    )
    if events is None:
        render.emit_json(report) if as_json else render.run(report)


@migration.command("test")
@click.option("--with-data", is_flag=True, help="Apply everything pending to a copy; validate.")
@click.option("--rollback", is_flag=True, help="Up, down, up each pending migration on a copy.")
@click.option("--performance", is_flag=True, help="Time each migration on a copy; rows/s.")
@click.option("--isolation", metavar="VERSION", help="VERSION up and down on a fresh database.")
@json_option
def test(
    with_data: bool, rollback: bool, performance: bool, isolation: str | None, as_json: bool
) -> None:
    """Rehearse pending migrations on a copy (exit 4 if a down is lossy, 1 if one fails)."""
    from flywall.cli import render
    from flywall.core import commands

    modes = {"with-data": with_data, "rollback": rollback, "performance": performance}
    chosen = [m for m, on in {**modes, "isolation": isolation is not None}.items() if on]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one of --with-data, --rollback, --performance, --isolation V"
        )
    report = commands.test(workspace(), chosen[0], isolation)
    render.emit_json(report) if as_json else render.trial(report)
    sys.exit(report.exit_code)


@migration.command()
@wait_option
@json_option
@interruptible
def recover(as_json: bool) -> None:
    """Resolve interrupted migrations now, from the evidence in the targets."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.recover(workspace(), **hooks(None, as_json))
    render.emit_json(report) if as_json else render.run(report)


@migration.command()
@click.option("--migration", "version", metavar="VERSION", help="Only this migration's events.")
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind (repeatable).")
@click.option("--actor", help="Only events caused by this user, user@host or API client.")
@click.option("--since", metavar="SEQ|TIME", help="From this seq or ISO-8601 time (inclusive).")
@click.option("--until", metavar="SEQ|TIME", help="Up to this seq or ISO-8601 time (inclusive).")
@json_option
def history(
    version: str | None,
    kinds: tuple[str, ...],
    actor: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Show journal events, oldest first (filtered by migration, kind, actor, time)."""
    from flywall.cli import render
    from flywall.core import commands

    items = commands.history(
        workspace(), migration=version, kinds=kinds, actor=actor, since=since, until=until
    )
    render.emit_json(items) if as_json else render.events(items)


@migration.command()
@click.argument("version")
@json_option
def log(version: str, as_json: bool) -> None:
    """Show what migration VERSION logged with ctx.log(), run by run."""
    from flywall.cli import render
    from flywall.core import commands

    lines = commands.log(workspace(), version)
    if as_json:
        render.emit_json(lines)
        return
    for line in lines:
        click.echo(f"{line['at']}  {line['run_id']}  {line['level']:<5} {line['message']}")


@migration.command()
@click.argument("name")
@click.option(
    "--component",
    type=click.Choice(["database", "state", "config", "api"]),
    default=None,
    help="What the migration changes.  [default: database; config with --declarative]",
)
@click.option("--sql", is_flag=True, help="Write a .sql migration (database only).")
@click.option(
    "--declarative",
    is_flag=True,
    help="Write a .hcl migration in Flywall's declarative format (config only).",
)
@json_option
def create(name: str, component: str | None, sql: bool, declarative: bool, as_json: bool) -> None:
    """Write a new migration file from a template into the migrations directory."""
    from flywall.cli import render
    from flywall.core import commands

    path = commands.create(workspace(), name, component=component, sql=sql, declarative=declarative)
    render.emit_json({"path": str(path)}) if as_json else click.echo(f"created {path}")


@migration.command()
@json_option
def checksums(as_json: bool) -> None:
    """Compare each migration file's checksum with the one it was applied with."""
    from flywall.cli import render
    from flywall.core import commands

    rows = commands.checksums(workspace())
    render.emit_json(rows) if as_json else render.checksums(rows)
    if not all(r.match for r in rows):
        sys.exit(commands.errors.EXIT_VALIDATION)


@migration.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also check the journal file's SQLite integrity and every backup against its manifest.",
)
@json_option
def validate(everything: bool, as_json: bool) -> None:
    """Check the journal, checksums, config, state.db and drift (exit 4; deprecations only warn).

    Always runs the full integrity check of state.db, the whole journal chain and each
    applied migration's verify; --all adds the checks marked "(--all only)".
    """
    from flywall.core import commands

    _report_checks(commands.validate(workspace(), everything=everything), as_json=as_json)


@migration.command()
@click.option(
    "--data",
    is_flag=True,
    help="The data checks (the default, and the only scope today).",
)
@json_option
def verify(data: bool, as_json: bool) -> None:  # noqa: ARG001 - --data is the only scope
    """Run the data checks alone: state.db, its change log, each migration's verify (exit 4).

    --data is the default and the only scope today: state.db's PRAGMA integrity_check and
    foreign_key_check, Flywall's change-log chain, and each applied migration's verify.
    """
    from flywall.core import commands

    _report_checks(commands.verify_data(workspace()), as_json=as_json)


def _report_checks(report: ValidationReport, *, as_json: bool) -> None:
    """Print each check as ok / warn / FAIL (or the report as JSON); exit 4 on a failure."""
    from flywall.cli import render
    from flywall.core import commands

    if as_json:
        render.emit_json(report)
    else:
        labels = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
        for v in commands.verdicts(report):
            scope = " (--all only)" if v.all_only else ""
            click.echo(f"{labels[v.level]}  {v.name}{scope}: {v.result}")
        for warning in report.warnings:
            click.echo(f"warn  {warning}")
    if not report.ok:
        sys.exit(commands.errors.EXIT_VALIDATION)


@migration.group(cls=Group, lazy=JOURNAL_COMMANDS)
def journal() -> None:
    """Inspect the journal itself; get a box back from a damaged one."""


@journal.command("verify")
@json_option
def journal_verify(as_json: bool) -> None:
    """Walk the hash chain and replay every event; name the first bad seq (exit 4)."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.journal_verify(workspace())
    if as_json:
        render.emit_json(report)
    else:
        since = report.keyed_from
        keyed = f" (device key MAC from seq {since})" if since else ""
        click.echo(f"ok: {report.events} events, head {report.head_hash[:16] or '-'}{keyed}")


@journal.command("recover-from-backup")
@click.argument("backup_id")
@click.option("--yes", is_flag=True, help="Recover without asking (unattended use).")
@click.option("--force", is_flag=True, help="Replace the journal even though it is sound.")
@wait_option
@json_option
def journal_recover_from_backup(backup_id: str, yes: bool, force: bool, as_json: bool) -> None:
    """Replace a damaged journal by BACKUP_ID's copy; restore the targets from it too."""
    from flywall.cli import render
    from flywall.core import commands

    ws = workspace()
    commands.backup_manifest(ws, backup_id)  # an unknown id fails before the question
    if not yes and not as_json:
        ask_or_refuse(
            f"Replace the journal by backup {backup_id}'s copy and restore its targets?",
            f"recovering from {backup_id} replaces the journal and restores the targets",
        )
    report = commands.journal_recover_from_backup(ws, backup_id, force=force)
    if as_json:
        render.emit_json(report)
        return
    kept = f"damaged journal kept as {report.damaged}" if report.damaged else "no journal was kept"
    click.echo(
        f"recovered the journal from backup {backup_id} (seq {report.journal_seq}, "
        f"event {report.seq}); {kept}; reason: {report.reason}"
    )


@migration.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--layout",
    type=click.Choice(["flywall", "seed"]),
    default="flywall",
    show_default=True,
    help="Flywall's tree (opt/flywall/...) or the seed's (etc/flywall, var/lib/flywall).",
)
@json_option
def demo(directory: Path, layout: str, as_json: bool) -> None:
    """Build a sample appliance tree in DIRECTORY to try every command on."""
    from flywall.cli import render
    from flywall.core import commands

    made = commands.demo(directory, layout)
    if as_json:
        render.emit_json(made)
        return
    click.echo(f"built a sample appliance ({layout} layout) in {directory}")
    click.echo(f"try: flywall-migration --root {directory} status")
