"""Notification, audit and signing commands; ^C handling around the run commands.

`notify`, `replay`, `journal export`, `journal verify-export` and `sign`. Notices are
delivered by the core after every writing command (flywall.core.services.notify), not here.

main.py adds them to its groups by name (`MIGRATION_COMMANDS`, `JOURNAL_COMMANDS`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from flywall.cli.options import json_option, workspace


@click.command()
@json_option
def notify(as_json: bool) -> None:
    """Deliver pending notices to every channel now (exit 1 if one is unreachable)."""
    from flywall.cli import render
    from flywall.core import commands

    ws = workspace()
    results = commands.notify(ws)
    if as_json:
        render.emit_json(results)
    elif not ws.settings.notification_channels:
        click.echo("no notification channels configured")
    elif not results:
        click.echo("nothing to send: no journal yet")
    for r in results if not as_json else ():
        if r.started_after is not None:
            start = f"starts after seq {r.started_after} (the newest run)"
            click.echo(f"{r.channel}: new channel: {start}")
        if r.error is None:
            sent = f"sent {r.sent} notice(s) to {r.target}"
            click.echo(f"{r.channel}: {sent}; through seq {r.through_seq}")
        else:
            click.echo(f"{r.channel}: {r.target}: FAILED: {r.error}; {r.waiting} notice(s) waiting")
    if any(r.error for r in results):
        sys.exit(commands.errors.EXIT_MIGRATION_FAILED)


@click.command()
@click.option("--until", required=True, metavar="SEQ|TIME", help="A seq, or an ISO-8601 time.")
@json_option
def replay(until: str, as_json: bool) -> None:
    """Show the status as it was at seq or time UNTIL, replayed from the journal."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.replay(workspace(), until)
    if as_json:
        render.emit_json(report)
        return
    at = report.at or "empty journal"
    click.echo(f"as of seq {report.seq} ({at}), head {report.head_hash[:16] or '-'}")
    comps = ", ".join(f"{k} {v}" for k, v in report.components.items()) or "none applied"
    click.echo(f"components  {comps}")
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in report.counts.items() if n)
    click.echo(f"migrations  {counts or 'none'}")
    if report.last_run:
        r = report.last_run
        click.echo(f"last run    {r['run_id']} {r['command']} {r['outcome']} at {r['finished_at']}")
    for r in report.running:
        click.echo(f"running     {r['run_id']} {r['command']} by {r['user']} since {r['since']}")
    if report.migrations:
        render.table(
            [
                (m["version"], m["component"], m["state"], m["applied_at"] or "-")
                for m in report.migrations
            ],
            ("VERSION", "COMPONENT", "STATE", "APPLIED AT"),
        )


@click.command("export")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE instead of stdout.",
)
@json_option
def journal_export(output: Path | None, as_json: bool) -> None:
    """Write every journal event as one JSON line, each verifiable offline.

    The lines are JSON either way; with --output, --json prints the summary as JSON.
    """
    from flywall.cli import render
    from flywall.core import commands

    ws = workspace()
    if output is None:
        commands.journal_export(ws, sys.stdout)
        return
    count = commands.journal_export_to(ws, output)
    if as_json:
        render.emit_json({"path": str(output), "events": count})
    else:
        click.echo(f"exported {count} events to {output}")


@click.command("adopt-key")
@json_option
def journal_adopt_key(as_json: bool) -> None:
    """Start keying a journal begun without the device key (migration.device_key_file).

    The whole plain chain is checked first; then a DeviceKeyAdopted event becomes the
    chain's first MAC, and every later event is one too. The earlier events keep their
    plain hashes but are covered by that MAC: none can be rewritten without the key.
    Run it once, after setting device_key_file; again, it only reports (exit 0).
    """
    from flywall.cli import render
    from flywall.core import commands

    report = commands.adopt_device_key(workspace())
    if as_json:
        render.emit_json(report)
    elif report.adopted:
        click.echo(
            f"adopted device key {report.key_id}: {report.path} is keyed from seq "
            f"{report.keyed_from}, which covers every event before it"
        )
    else:
        click.echo(f"{report.path} is keyed already, from seq {report.keyed_from}")


@click.command("verify-export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def journal_verify_export(file: Path, as_json: bool) -> None:
    """Check an exported journal offline; name the first altered line and seq (exit 4)."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.journal_verify_export(workspace(), file)
    if as_json:
        render.emit_json(report)
    else:
        since = report.keyed_from
        keyed = f" (device key MAC from seq {since})" if since else ""
        click.echo(f"ok: {report.events} events, head {report.head_hash[:16] or '-'}{keyed}")


@click.command()
@click.option(
    "--key",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 private key: 32 raw bytes, 64 hex characters or PEM.",
)
@json_option
def sign(key: Path, as_json: bool) -> None:
    """Write signatures.json: every migration file's checksum, signed with Ed25519 KEY."""
    from flywall.cli import render
    from flywall.core import commands

    report = commands.sign(workspace(), key)
    if as_json:
        render.emit_json(report)
        return
    click.echo(f"signed {len(report.files)} migration(s) in {report.path} with key {report.key_id}")
    click.echo(f"public key (for trusted_keys): {report.public_key}")
