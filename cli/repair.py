"""Backup and repair commands: `backup create|list|restore|prune`, `force`, `debug`.

main.py adds them to its groups by name (`MIGRATION_COMMANDS`, `JOURNAL_COMMANDS`).
"""

from __future__ import annotations

import sys

import click

from flywall.cli.options import ask_or_refuse, json_option, wait_option, workspace


@click.group(name="backup")
def backup_group() -> None:
    """Create, list, restore and prune backups of state.db, flywall.hcl and api.json."""


@backup_group.command("create")
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Re-read the copies against their manifest digests.",
)
@wait_option
@json_option
def backup_create(verify: bool, as_json: bool) -> None:
    """Back up state.db, flywall.hcl and api.json now (journaled; exit 4 if a copy is bad)."""
    from flywall.cli import render
    from flywall.core import commands

    row = commands.backup_create(workspace(), verify=verify)
    if as_json:
        render.emit_json(row)
    else:
        check = {True: "ok", False: "CORRUPT", None: "not verified"}[row.ok]
        click.echo(
            f"created backup {row.backup_id} ({row.size} bytes: {', '.join(row.items)}); "
            f"check {check}"
        )
    if row.ok is False:
        sys.exit(commands.EXIT_VALIDATION)


@backup_group.command("list")
@json_option
def backup_list(as_json: bool) -> None:
    """List complete backups, oldest first, each checked against its manifest."""
    from flywall.cli import render
    from flywall.core import commands

    rows = commands.backup_list(workspace())
    if as_json:
        render.emit_json(rows)
        return
    if not rows:
        click.echo("no backups")
        return
    render.table(
        [
            (r.backup_id, r.created_at or "-", str(r.size), "ok" if r.ok else "CORRUPT", r.reason)
            for r in rows
        ],
        ("BACKUP", "CREATED AT", "BYTES", "CHECK", "REASON"),
    )


@backup_group.command("restore")
@click.argument("backup_id")
@click.option("--yes", is_flag=True, help="Restore without asking (unattended use).")
@wait_option
@json_option
def backup_restore(backup_id: str, yes: bool, as_json: bool) -> None:
    """Restore BACKUP_ID (after a safety backup); journals what it rolls back."""
    from flywall.cli import render
    from flywall.core import commands

    ws = workspace()
    manifest = commands.backup_manifest(ws, backup_id)  # an unknown id fails before the question
    if not yes and not as_json:
        taken = commands.iso_seconds(manifest.created_ns)
        ask_or_refuse(
            f"Restore backup {backup_id} (taken {taken}, journal seq "
            f"{manifest.journal_seq}) over the live targets?",
            f"restoring {backup_id} overwrites the live targets",
        )
    report = commands.backup_restore(ws, backup_id)
    if as_json:
        render.emit_json(report)
    else:
        undone = ", ".join(report.undone) or "none"
        click.echo(f"restored {backup_id} (run {report.run_id}); rolled back: {undone}")


@backup_group.command("prune")
@click.option("--keep", type=click.IntRange(min=1), default=1, show_default=True)
@wait_option
@json_option
def backup_prune(keep: int, as_json: bool) -> None:
    """Remove all but the newest --keep backups (the newest is never removed)."""
    from flywall.cli import render
    from flywall.core import commands

    removed = commands.backup_prune(workspace(), keep=keep)
    if as_json:
        render.emit_json({"removed": removed})
    else:
        click.echo(
            f"removed {len(removed)} backup(s)" + (f": {', '.join(removed)}" if removed else "")
        )


@click.command()
@click.option("--version", "version", required=True, help="The migration to set.")
@click.option(
    "--state",
    required=True,
    type=click.Choice(["pending", "applied", "failed", "rolled_back"]),
    help="The state to record.",
)
@click.option("--reason", required=True, help="Why: journaled with who did it.")
@wait_option
@json_option
def force(version: str, state: str, reason: str, as_json: bool) -> None:
    """Record a migration's state by hand (journaled with actor and reason)."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.force(workspace(), version, state, reason)
    if as_json:
        render.emit_json(report)
    else:
        click.echo(f"forced {version} to {state} (run {report.run_id})")


@click.command()
@click.argument("version")
@click.option("--reason", required=True, help="Why the applied file was edited: journaled.")
@json_option
def repair(version: str, reason: str, as_json: bool) -> None:
    """Bind applied VERSION to its edited file (journaled with who, why, both digests)."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.repair(workspace(), version, reason)
    if as_json:
        render.emit_json(report)
    else:
        click.echo(f"repaired {version}: bound to its file as it is now (run {report.run_id})")


@click.command()
@click.argument("version")
@json_option
def debug(version: str, as_json: bool) -> None:
    """Show everything about VERSION: file, checksums, state, events, log, SQL, backups."""
    from flywall.cli import render
    from flywall.core import commands

    info = commands.debug(workspace(), version)
    if as_json:
        render.emit_json(info)
        return
    for key in ("version", "file", "component", "description", "state", "last_error"):
        click.echo(f"{key:<18}{info[key]}")
    click.echo(f"{'checksum on disk':<18}{info['checksum_on_disk']}")
    click.echo(f"{'checksum recorded':<18}{info['checksum_recorded']}")
    click.echo(f"{'backups before it':<18}{', '.join(info['backups']) or '-'}")
    if info["sql"]:
        for section, sql in info["sql"].items():
            if sql:
                click.echo(f"-- {section}\n{sql.strip()}")
    click.echo("events:")
    render.events(info["events"])


@click.command()
@wait_option
@click.option(
    "--when-healthy",
    "url",
    metavar="URL",
    help="First wait until Flywall answers URL (the boot unit: http://127.0.0.1:8080/).",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0),
    default=300,
    show_default=True,
    help="Seconds to wait with --when-healthy before giving up (exit 1, nothing confirmed).",
)
@json_option
def confirm(url: str | None, deadline: float, as_json: bool) -> None:
    """Confirm the last run is healthy, within its confirm_within window."""
    from flywall.cli import render
    from flywall.core import commands

    if url is not None:
        report = commands.confirm_when_healthy(workspace(), url, deadline)
        if report is None:
            render.emit_json({"done": []}) if as_json else click.echo("nothing to confirm")
            return
    else:
        report = commands.confirm(workspace())
    if as_json:
        render.emit_json(report)
    else:
        click.echo(f"confirmed run(s) {', '.join(report.done)}")
