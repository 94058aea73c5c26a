"""Boot-time integration: `install-units` (the systemd units shipped in the package).

main.py adds them to its groups by name (`MIGRATION_COMMANDS`, `JOURNAL_COMMANDS`).
"""

from __future__ import annotations

import click

from flywall.cli.options import json_option


@click.command("install-units")
@json_option
def install_units(as_json: bool) -> None:
    """Place the systemd units in ROOT/etc/systemd/system: recover before Flywall, confirm after."""
    from flywall.cli import render
    from flywall.core import commands

    root = click.get_current_context().obj["root"]
    written = commands.install_units(root)
    if as_json:
        render.emit_json({"written": [str(p) for p in written]})
        return
    for path in written:
        click.echo(f"installed {path}")
    click.echo("then: systemctl daemon-reload (on the box whose root this is)")
