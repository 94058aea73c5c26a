"""`flywall migration serve`: the HTTP API (DESIGN §10).

Registered on the `migration` group by importing this module (see the end of main.py).
"""

from __future__ import annotations

import click

from flywall.cli.main import _workspace, json_option, migration


@migration.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Address to serve on [default: server.listen in settings, 127.0.0.1:8080].",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a non-loopback --listen (put TLS in front: tokens travel in the clear).",
)
@json_option
def serve(listen: str | None, allow_remote: bool, as_json: bool) -> None:
    """Serve the HTTP API: bearer tokens from the tokens file, loopback unless allowed."""
    import functools

    from flywall.api.app import create_app
    from flywall.api.app import serve as run_server
    from flywall.api.security import load_tokens, parse_listen
    from flywall.cli import render
    from flywall.core.workspace import Workspace

    ws = _workspace()
    address = listen or ws.settings.server.listen
    host, port = parse_listen(address, allow_remote=allow_remote)
    tokens = load_tokens(ws.paths.tokens_file)
    obj = click.get_current_context().obj
    app = create_app(functools.partial(Workspace.load, obj["root"], obj["config"]), tokens)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if as_json:
        render.emit_json({"url": url, "tokens": len(tokens)})
    else:
        click.echo(f"serving the API on {url} ({len(tokens)} tokens)")
    run_server(app, host, port)
