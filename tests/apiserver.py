"""A real `flywall migration serve` on a free loopback port, for every test that speaks HTTP.

Shared by the API's tests and the tests of other folders that go through the API (tests/
is on the path, a test module in another folder is not).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import forkserver
import httpx
import pytest
from conftest import FLYWALL, Appliance

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


TOKEN, FLEET_TOKEN = "ops-token-0123456789abcdef", "fleet-token-0123456789abcdef"


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client of this worker. httpx builds one for each client it
    makes (~30 ms of cpu: it loads the CA bundle), and our servers speak plain HTTP on
    loopback, so the one context is never even used."""
    return httpx.create_ssl_context()


def client(**kwargs: Any) -> httpx.Client:
    """`httpx.Client(**kwargs)` sharing the worker's TLS context (see `_tls`)."""
    return httpx.Client(verify=_tls(), **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    """`httpx.get(url, **kwargs)` through a `client`."""
    with client() as one:
        return one.get(url, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(app: Appliance, mode: int = 0o600) -> Path:
    path = app.root / "etc/flywall/migration-api.tokens"
    path.write_text(f"# name token\nops {TOKEN}\nfleet {FLEET_TOKEN}  # the fleet agent\n")
    path.chmod(mode)
    return path


@dataclass
class Server:
    """A running `serve` process (forked, tests/forkserver.py) and a client with the ops token."""

    url: str
    client: httpx.Client
    log: Path

    def as_(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client(base_url=self.url, headers=headers, timeout=10)

    def wait_run(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        """Poll GET /api/runs/{id} until the run is no longer running (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.client.get(f"/api/runs/{run_id}")
            assert run.status_code == 200, run.text
            if run.json()["state"] != "running":
                return run.json()
            time.sleep(0.05)
        pytest.fail(f"run {run_id} still running after {timeout} s")


@contextlib.contextmanager
def serving(
    appliance: Appliance,
    log: Path,
    *args: str,
    uds: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Server]:
    """Run `flywall migration serve ARGS` on a free loopback port (or `uds`) until the block ends."""
    if not (appliance.root / "etc/flywall/migration-api.tokens").exists():
        write_tokens(appliance)
    if uds is None:
        port = free_port()
        listen, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    else:
        listen, url = f"unix:{uds}", "http://flywall"

    def transport() -> httpx.HTTPTransport | None:  # a client closes its transport
        return None if uds is None else httpx.HTTPTransport(uds=str(uds))

    argv = [FLYWALL, "migration", "--root", str(appliance.root), "serve", "--listen", listen, *args]
    with log.open("w") as out:
        process: forkserver.Child | subprocess.Popen[bytes]
        if preexec_fn is None and forkserver.forkable(argv):  # a process of its own, forked
            process = forkserver.spawn(argv, stdout=out.fileno(), stderr=out.fileno())
        else:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec_fn,  # noqa: PLW1509 - only sets a resource limit
            )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve did not come up"
            if uds is not None and "serving the API" not in log.read_text():
                time.sleep(0.05)  # httpcore leaks the socket of a failed unix connect
                continue
            try:
                with client(transport=transport(), timeout=1) as probe:
                    if probe.get(f"{url}/healthz").status_code == 200:
                        break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.05)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with client(base_url=url, headers=headers, timeout=10, transport=transport()) as ops:
            yield Server(url, ops, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    assert "Traceback" not in log.read_text()
