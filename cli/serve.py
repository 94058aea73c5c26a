"""`flywall migration serve`: the HTTP API (DESIGN §10).

main.py adds them to its groups by name (`MIGRATION_COMMANDS`, `JOURNAL_COMMANDS`).
"""

from __future__ import annotations

import click

from flywall.cli.options import json_option, workspace


@click.command()
@click.option(
    "--listen",
    metavar="HOST:PORT|unix:PATH",
    default=None,
    help="Address to serve on [default: server.listen in settings, 127.0.0.1:8089].",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a non-loopback --listen (put TLS in front: tokens travel in the clear).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1, max=3600),
    default=10.0,
    show_default=True,
    help="Seconds a client has to send a request's headers before it is disconnected.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1, max=65536),
    default=256,
    show_default=True,
    help="Open connections at most (and at most half the file limit); the oldest idle goes.",
)
@json_option
def serve(
    listen: str | None,
    allow_remote: bool,
    header_timeout: float,
    max_connections: int,
    as_json: bool,
) -> None:
    """Serve the HTTP API: bearer tokens from the tokens file, loopback unless allowed."""
    import functools

    from flywall.api.app import create_app
    from flywall.api.security import load_tokens, parse_listen
    from flywall.api.server import bind
    from flywall.api.server import serve as run_server
    from flywall.cli import render
    from flywall.core.commands import Workspace

    ws = workspace()
    address = parse_listen(listen or ws.settings.server.listen, allow_remote=allow_remote)
    tokens = load_tokens(ws.paths.tokens_file)
    obj = click.get_current_context().obj
    app = create_app(functools.partial(Workspace.load, obj["root"], obj["config"]), tokens)
    sock = bind(address)
    if as_json:
        render.emit_json({"url": address.url(), "tokens": len(tokens)})
    else:
        click.echo(f"serving the API on {address.url()} ({len(tokens)} tokens)")
    run_server(app, sock, header_timeout=header_timeout, max_connections=max_connections)
