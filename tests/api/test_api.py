"""The HTTP API, served by a real `flywall migration serve` (uvicorn) and spoken to with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import re
import resource
import socket
import stat
import subprocess
import time
from typing import TYPE_CHECKING, Any

import apiserver
import httpx
import pytest
from apiserver import FLEET_TOKEN, TOKEN, Server, free_port, serving, write_tokens
from conftest import FLYWALL, Appliance, create_table_migration, hold_lock_migration

from flywall.api.server import Throttled, loop_error_handler

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


V1, V2 = "202401010001", "202401010002"
RUN_ID = r"\d{8}T\d{6}-[0-9a-f]{6}"


@pytest.fixture
def server(appliance: Appliance, tmp_path: Path) -> Iterator[Server]:
    with serving(appliance, tmp_path / "serve.log") as running:
        yield running


@contextlib.contextmanager
def _box_serving(
    factory: pytest.TempPathFactory, name: str, *, applied: bool
) -> Iterator[tuple[Appliance, Server]]:
    """A module's server over an appliance with one migration, pending or `applied`."""
    tmp = factory.mktemp(name)
    app = Appliance(tmp / "appliance")
    app.configure()
    create_table_migration(app, V1, "alpha")
    if applied:
        app.migrate()
    with serving(app, tmp / "serve.log") as running:
        yield app, running


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Server]]:
    """One server for the read-only refusals (an appliance with one pending migration)."""
    with _box_serving(tmp_path_factory, "shared", applied=False) as box:
        yield box


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Server]]:
    """One server for read-only requests that need a journal (one migration applied)."""
    with _box_serving(tmp_path_factory, "journaled", applied=True) as box:
        yield box


def cli_json(app: Appliance, *args: str) -> Any:
    result = app.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_json_error(response: httpx.Response, status: int) -> str:
    """A refusal is a JSON `{error, status}` with the status, never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "status"}
    assert body["status"] == status
    assert "Traceback" not in response.text
    return body["error"]


# -- auth and the server's own refusals -----------------------------------------------------

ROUTES = [
    ("GET", "/api/migration/status"),
    ("GET", "/api/migrations"),
    ("GET", f"/api/migrations/{V1}"),
    ("GET", "/api/migrations/history"),
    ("GET", f"/api/migrations/{V1}/details"),
    ("GET", f"/api/migrations/{V1}/log"),
    ("POST", "/api/migrations/apply"),
    ("POST", "/api/migrations/rollback"),
    ("POST", "/api/migrations/confirm"),
    ("GET", "/api/runs/20240101T000000-abcdef"),
    ("GET", "/api/events"),
    ("GET", "/schema/openapi.json"),
]


def test_healthz_answers_without_a_token(shared):
    _, server = shared
    assert apiserver.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}


def test_every_other_route_refuses_a_missing_or_wrong_token_with_401(shared):
    _, server = shared  # refused before any route runs: nothing changes
    for token in (None, "wrong-token-0123456789abcdef", TOKEN[:-1]):
        with server.as_(token) as client:
            for method, path in ROUTES:
                response = client.request(method, path, json={})
                error = assert_json_error(response, 401)
                assert error == "missing or wrong bearer token"
                assert response.headers["www-authenticate"] == "Bearer"
    with apiserver.client(base_url=server.url, timeout=10) as client:
        basic = client.get("/api/migrations", headers={"Authorization": f"Basic {TOKEN}"})
        assert_json_error(basic, 401)


def test_serve_refuses_a_tokens_file_others_can_read(appliance):
    path = write_tokens(appliance, 0o644)

    result = appliance.cli("serve", "--listen", f"127.0.0.1:{free_port()}", timeout=30)

    assert result.returncode == 2
    assert result.stderr == (
        f"FAILED: {path}: mode 0644 lets others read the API tokens; "
        f"it must be 0600 (chmod 600 {path})\n"
    )


def test_serve_refuses_a_remote_address_without_allow_remote(appliance):
    write_tokens(appliance)

    result = appliance.cli("serve", "--listen", "0.0.0.0:8080", timeout=30)

    assert result.returncode == 2
    assert result.stderr == (
        "FAILED: --listen 0.0.0.0:8080: 0.0.0.0 is not a loopback address; "
        "add --allow-remote to serve the API beyond this machine\n"
    )


TOKENS_REFUSED = [
    (
        "a # inside a token",
        b"ops ops-token-0123#456789abcdef\n",
        ":1: the token of 'ops' holds '#' (a comment starts only after a space)",
    ),
    (
        "one token under two names",
        b"ops shared-token-0123456789\n# rotated\nfleet shared-token-0123456789\n",
        (
            ":3: the token of 'fleet' is also the token of 'ops' (line 1); "
            "give each client its own token"
        ),
    ),
    (
        "a control character in a name",
        b"op\x1bs ops-token-0123456789abcdef\n",
        ":1: the name 'op\\x1bs' holds a control character",
    ),
    (
        "bytes that are not UTF-8",
        b"ops ops-token-0123456789abcdef\nfl\xffeet fleet-token-0123456789abcdef\n",
        ":2: not UTF-8 text",
    ),
    (
        "a token that is not visible ASCII",
        "ops ops-token-0123456789abcdéf\n".encode(),
        ":1: the token of 'ops' must be visible ASCII characters",
    ),
]


@pytest.mark.parametrize(
    ("content", "error"), [t[1:] for t in TOKENS_REFUSED], ids=[t[0] for t in TOKENS_REFUSED]
)
def test_serve_refuses_a_tokens_file_whose_lines_mean_something_else(appliance, content, error):
    path = appliance.root / "etc/flywall/migration-api.tokens"
    path.write_bytes(content)
    path.chmod(0o600)

    result = appliance.cli("serve", "--listen", f"127.0.0.1:{free_port()}", timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"FAILED: {path}{error}\n"


def test_serve_refuses_a_directory_in_place_of_the_tokens_file(appliance):
    path = appliance.root / "etc/flywall/migration-api.tokens"
    path.mkdir(mode=0o700)

    result = appliance.cli("serve", "--listen", f"127.0.0.1:{free_port()}", timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"FAILED: {path}: not a file; the API tokens file holds `name token` lines\n"
    )


def test_a_comment_after_a_token_and_a_rotated_name_are_still_accepted(appliance, tmp_path):
    path = write_tokens(appliance)
    path.write_text(f"ops {TOKEN}  # ops\nops rotated-token-0123456789 #new\n")
    with serving(appliance, tmp_path / "serve.log") as server:
        path.write_text(f"ops {TOKEN}\n")  # what was loaded at start is what counts
        with server.as_("rotated-token-0123456789") as rotated:
            assert rotated.get("/api/migrations").status_code == 200


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:\u0668\u0660\u0668\u0669",  # Arabic-Indic digits: int() takes them
        "127.0.0.1:\uff18\uff10\uff18\uff19",  # full-width digits
        "127.0.0.1:+8089",
        "127.0.0.1: 8089",
        "127.0.0.1:8089\n",
        "127.0.0.1:" + "8" * 5000,
        "unix:",
    ],
)
def test_serve_refuses_a_listen_port_of_anything_but_ascii_digits(appliance, listen):
    write_tokens(appliance)

    result = appliance.cli("serve", "--listen", listen, timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("FAILED: bad --listen ")
    assert result.stderr.count("\n") == 1
    assert len(result.stderr) < 200


def test_serve_listens_on_127_0_0_1_port_8089_by_default(appliance, tmp_path):
    """Never Flywall's own 8080/8443: an upgrade tool must not take the firmware's port."""
    write_tokens(appliance)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [FLYWALL, "migration", "--root", str(appliance.root), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "serving the API" not in log.read_text() and process.poll() is None:
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.05)
        if process.poll() is not None and "in use" in log.read_text():
            pytest.skip("port 8089 is taken on this machine")
        assert log.read_text().startswith(
            "serving the API on http://127.0.0.1:8089 (2 tokens)\n"
        ), log.read_text()
        response = apiserver.get("http://127.0.0.1:8089/healthz", timeout=10)
        assert response.json() == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_serve_listens_on_a_unix_socket_only_its_owner_may_open(appliance, tmp_path):
    sock = tmp_path / "api.sock"
    with serving(appliance, tmp_path / "serve.log", uds=sock) as server:
        assert stat.S_ISSOCK(sock.lstat().st_mode)
        assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
        assert server.client.get("/api/migrations").json() == []
        anonymous = server.client.get("/api/migrations", headers={"Authorization": ""})
        assert_json_error(anonymous, 401)
        assert (
            (tmp_path / "serve.log")
            .read_text()
            .startswith(f"serving the API on unix:{sock} (2 tokens)\n")
        )
    assert not sock.exists()  # removed on the way out


def test_serve_replaces_a_stale_socket_and_refuses_a_file_or_a_live_one(appliance, tmp_path):
    sock = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # as a killed server leaves it: bound, nobody listening
    with serving(appliance, tmp_path / "serve.log", uds=sock):
        again = appliance.cli("serve", "--listen", f"unix:{sock}", timeout=30)
        assert (again.returncode, again.stdout) == (2, "")
        assert again.stderr == f"FAILED: --listen unix:{sock}: another server listens there\n"
    plain = tmp_path / "plain"
    plain.write_text("not a socket")

    result = appliance.cli("serve", "--listen", f"unix:{plain}", timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"FAILED: --listen unix:{plain}: exists and is not a socket\n"
    assert plain.read_text() == "not a socket"


def test_serve_says_in_one_line_that_its_port_is_taken(appliance):
    write_tokens(appliance)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = appliance.cli("serve", "--listen", f"127.0.0.1:{port}", timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"FAILED: --listen http://127.0.0.1:{port}: Address already in use\n"


# -- slow and idle clients -------------------------------------------------------------------


def low_file_limit() -> None:
    """In the server's process: 128 file descriptors, as on a small appliance."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))


def test_200_idle_connections_neither_silence_healthz_nor_flood_the_log(appliance, tmp_path):
    log = tmp_path / "serve.log"
    with serving(appliance, log, preexec_fn=low_file_limit) as server:
        port = int(server.url.rpartition(":")[2])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
        try:
            assert apiserver.get(f"{server.url}/healthz", timeout=15).json() == {"status": "ok"}
            assert server.client.get("/api/migrations").status_code == 200
        finally:
            for connection in idle:
                connection.close()
        before = log.read_text()
    lines = before.splitlines()
    evictions = [line for line in lines if "connections open: closed" in line]
    assert 1 <= len(evictions) <= 3, before  # one line per 10 s, with a count
    # asyncio accepts a burst before any connection is counted: out of descriptors for a
    # moment, it retries each second; that too is one line per 10 s, never a traceback.
    assert len([line for line in lines if "cannot accept" in line]) <= 3, before
    assert len(lines) < 30, before


def read_until_closed(connection: socket.socket, limit: float) -> bytes:
    """Read until the server closes the connection; fail after `limit` seconds."""
    connection.settimeout(limit)
    data = b""
    with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
        while chunk := connection.recv(4096):
            data += chunk
    return data


def healthz_answer(connection: socket.socket) -> bytes:
    """Read one whole answer of /healthz (its body ends it) from a raw connection."""
    data = b""
    while not data.endswith(b'{"status":"ok"}'):
        chunk = connection.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_a_client_that_never_finishes_its_headers_is_disconnected(appliance, tmp_path):
    log = tmp_path / "serve.log"
    with serving(appliance, log, "--header-timeout", "1") as server:
        port = int(server.url.rpartition(":")[2])
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        kept = socket.create_connection(("127.0.0.1", port), timeout=10)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        with silent, slow, kept:
            assert healthz_answer(kept).startswith(b"HTTP/1.1 200 ")
            assert read_until_closed(silent, 10) == b""
            assert read_until_closed(slow, 10) == b""
            took = time.monotonic() - t0
            # Answered in time, a connection is kept alive (uvicorn's 5 s) past the 1 s.
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert healthz_answer(kept).startswith(b"HTTP/1.1 200 ")
        assert server.client.get("/healthz").status_code == 200
    assert 0.5 < took < 5
    assert "no request headers within 1 s" in log.read_text()


def test_garbage_on_many_connections_writes_one_warning(shared):
    _, server = shared  # no other test sends it garbage
    port = int(server.url.rpartition(":")[2])
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"\x16\x03\x01 not HTTP at all\r\n\r\n")
            assert read_until_closed(connection, 10).startswith(b"HTTP/1.1 400 ")
    assert server.client.get("/healthz").status_code == 200

    assert server.log.read_text().count("Invalid HTTP request received.") == 1


def test_accept_errors_are_logged_one_line_at_a_time(caplog):
    """Out of file descriptors, asyncio fails `accept` every second, each with a traceback."""
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(loop_error_handler(Throttled(logging.getLogger("t"), 60)))
        error = OSError(errno.EMFILE, "Too many open files")
        with caplog.at_level(logging.WARNING):
            for _ in range(50):
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": error}
                )
    finally:
        loop.close()

    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [
        ("cannot accept connections: Too many open files", None)
    ]


# -- the same JSON as the CLI ---------------------------------------------------------------


def test_read_endpoints_answer_the_json_the_cli_prints(appliance, server):
    create_table_migration(appliance, V1, "alpha")
    create_table_migration(appliance, V2, "beta")
    appliance.migrate(V1)
    get = server.client.get

    assert get("/api/migration/status").json() == cli_json(appliance, "status")
    assert get("/api/migration/status?verbose=true").json() == cli_json(
        appliance, "status", "--verbose"
    )
    rows = cli_json(appliance, "list")
    assert get("/api/migrations").json() == rows
    assert get("/api/migrations?pending=true").json() == cli_json(appliance, "list", "--pending")
    assert get(f"/api/migrations/{V1}").json() == rows[0]
    history = cli_json(appliance, "history")
    assert get("/api/migrations/history").json() == history
    assert get(f"/api/migrations/history?migration={V1}").json() == cli_json(
        appliance, "history", "--migration", V1
    )
    finished = get("/api/migrations/history?kind=RunFinished").json()
    assert finished == [item for item in history if item["kind"] == "RunFinished"]
    assert get(f"/api/migrations/{V1}/details").json() == cli_json(appliance, "debug", V1)
    log = get(f"/api/migrations/{V1}/log")
    assert log.headers["content-type"].startswith("text/plain")
    assert log.text == appliance.cli("log", V1).stdout


def test_unknown_versions_and_runs_answer_404(shared):
    _, server = shared  # V1 pending; nothing here finds anything to change
    unknown = "202499999999"
    for path in (f"/api/migrations/{unknown}", f"/api/migrations/{unknown}/details"):
        assert assert_json_error(server.client.get(path), 404) == f"unknown migration {unknown}"
    assert_json_error(server.client.get(f"/api/migrations/{unknown}/log"), 404)
    rollback = server.client.post("/api/migrations/rollback", json={"version": unknown})
    assert_json_error(rollback, 404)
    assert_json_error(server.client.get("/api/runs/20240101T000000-abcdef"), 404)


# -- writing: runs, the lock, confirmation --------------------------------------------------


def test_apply_answers_202_with_a_run_that_completes(appliance, server):
    create_table_migration(appliance, V1, "alpha")
    create_table_migration(appliance, V2, "beta")

    accepted = server.client.post("/api/migrations/apply", json={"target_version": V1})

    assert accepted.status_code == 202
    run_id = accepted.json()["run_id"]
    assert re.fullmatch(RUN_ID, run_id)
    run = server.wait_run(run_id)
    assert (run["state"], run["command"], run["error"]) == ("completed", "migrate", None)
    assert run["report"]["run_id"] == run_id
    assert (run["report"]["outcome"], run["report"]["done"]) == ("completed", [V1])
    assert [r["state"] for r in cli_json(appliance, "list")] == ["applied", "pending"]
    assert cli_json(appliance, "status")["last_run"]["run_id"] == run_id


def test_rollback_answers_202_with_a_run_that_undoes_the_migration(appliance, server):
    create_table_migration(appliance, V1, "alpha")
    appliance.migrate()

    accepted = server.client.post("/api/migrations/rollback", json={"version": V1})

    assert accepted.status_code == 202
    run = server.wait_run(accepted.json()["run_id"])
    assert (run["state"], run["report"]["done"]) == ("completed", [V1])
    assert cli_json(appliance, "list")[0]["state"] == "rolled_back"


def test_a_run_that_fails_after_taking_the_lock_reports_failed(appliance, server):
    path = create_table_migration(appliance, V1, "alpha")
    create_table_migration(appliance, V2, "beta")
    appliance.migrate(V1)
    path.write_text(path.read_text() + "\n-- edited after it was applied\n")

    accepted = server.client.post("/api/migrations/apply", json={})

    assert accepted.status_code == 202
    run = server.wait_run(accepted.json()["run_id"])
    assert (run["state"], run["report"]) == ("failed", None)
    assert "checksum" in run["error"]


def test_an_unknown_target_is_refused_before_a_run_starts(appliance, server):
    """Issue 16 item 23: a 400 at once, as for a dry run, not a 202 and a failed run."""
    create_table_migration(appliance, V1, "alpha")
    for dry_run in (False, True):
        response = server.client.post(
            "/api/migrations/apply", json={"target_version": "nope", "dry_run": dry_run}
        )
        error = assert_json_error(response, 400)
        assert error.startswith("unknown target 'nope'")
        kinds = {item["kind"] for item in cli_json(appliance, "history")}
        assert "RunStarted" not in kinds


def test_apply_as_a_dry_run_answers_200_with_the_report(appliance, server):
    create_table_migration(appliance, V1, "alpha")

    response = server.client.post("/api/migrations/apply", json={"dry_run": True})

    assert response.status_code == 200
    report = response.json()
    assert (report["planned"], report["ok"]) == ([V1], True)
    assert "CREATE TABLE alpha" in report["schema_diff"]
    assert cli_json(appliance, "list")[0]["state"] == "pending"


def test_confirm_keeps_the_run_awaiting_confirmation(appliance, server):
    appliance.configure('confirm_within = "10m"\n')
    create_table_migration(appliance, V1, "alpha")
    assert_json_error(server.client.post("/api/migrations/confirm"), 400)
    run_id = server.client.post("/api/migrations/apply", json={}).json()["run_id"]
    assert server.wait_run(run_id)["state"] == "completed"

    response = server.client.post("/api/migrations/confirm")

    assert response.status_code == 200
    assert (response.json()["command"], response.json()["done"]) == ("confirm", [run_id])
    assert cli_json(appliance, "status")["awaiting_confirmation"] == {}


def test_a_busy_writer_answers_409_at_once_naming_the_holder(appliance, server, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    hold_lock_migration(appliance, V1, started, release)
    command = [FLYWALL, "migration", "--root", str(appliance.root), "migrate"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the CLI migrate never reached its migration"
        t0 = time.monotonic()
        apply = server.client.post("/api/migrations/apply", json={})
        took = time.monotonic() - t0
        rollback = server.client.post("/api/migrations/rollback", json={"version": V1})
    finally:
        release.touch()
        first.communicate(timeout=60)

    assert first.returncode == 0
    for response in (apply, rollback):
        error = assert_json_error(response, 409)
        assert re.fullmatch(rf"busy: run {RUN_ID} \(migrate\) by pid {first.pid} .+", error)
    assert took < 5  # the lock's own retry is half a second: a 409 never waits for the run


def test_the_journal_records_the_token_name_as_the_actor(appliance, server):
    create_table_migration(appliance, V1, "alpha")
    with server.as_(FLEET_TOKEN) as fleet:
        run_id = fleet.post("/api/migrations/apply", json={}).json()["run_id"]
        assert server.wait_run(run_id)["state"] == "completed"

    history = cli_json(appliance, "history")
    actors = [item["actor"] for item in history if item.get("actor")]
    assert actors
    assert all((a["user"], a["via"]) == ("fleet", "api") for a in actors)


# -- the event stream -----------------------------------------------------------------------


def sse_messages(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Parse server-sent events: fields until a blank line."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if fields:
                yield fields
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


def read_until(response: httpx.Response, kind: str, timeout: float = 30) -> list[dict[str, str]]:
    messages, deadline = [], time.monotonic() + timeout
    for message in sse_messages(response):
        messages.append(message)
        if message["event"] == kind:
            return messages
        assert time.monotonic() < deadline, "the stream did not deliver in time"
    pytest.fail("the stream ended")


def test_the_event_stream_delivers_a_runs_events_as_they_are_appended(appliance, server):
    create_table_migration(appliance, V1, "alpha")
    with (
        server.as_(TOKEN) as streaming,
        streaming.stream("GET", "/api/events", timeout=httpx.Timeout(10, read=30)) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        run_id = server.client.post("/api/migrations/apply", json={}).json()["run_id"]
        messages = read_until(response, "RunFinished")

    history = cli_json(appliance, "history")
    assert [json.loads(m["data"]) for m in messages] == history
    assert [(m["id"], m["event"]) for m in messages] == [
        (str(item["seq"]), item["kind"]) for item in history
    ]
    assert {item["run_id"] for item in history} == {run_id}


def test_the_event_stream_starts_after_the_given_seq(appliance, server):
    create_table_migration(appliance, V1, "alpha")
    appliance.migrate()
    with server.client.stream(
        "GET", "/api/events?after=2", timeout=httpx.Timeout(10, read=30)
    ) as response:
        messages = read_until(response, "RunFinished")

    assert [int(m["id"]) for m in messages] == list(range(3, len(messages) + 3))


# -- the OpenAPI document and bad input -----------------------------------------------------


def test_the_openapi_document_describes_every_route(shared):
    _, server = shared
    response = server.client.get("/schema/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = {path for _, path in ROUTES if not path.startswith("/schema")}
    documented = set(document["paths"])
    assert {"/api/migrations/{version}", "/api/runs/{run_id}", "/healthz"} <= documented
    assert {p for p in paths if V1 not in p and "/runs/" not in p} <= documented
    assert "RollbackRequest" in document["components"]["schemas"]


BAD = [
    ("malformed JSON", "POST", "/api/migrations/apply", b'{"dry_run": tru', 400),
    ("not JSON", "POST", "/api/migrations/apply", b"apply please", 400),
    ("empty body", "POST", "/api/migrations/apply", b"", 400),
    ("unknown field", "POST", "/api/migrations/apply", b'{"force": true}', 400),
    ("wrong type", "POST", "/api/migrations/apply", b'{"dry_run": "yes"}', 400),
    ("oversized body", "POST", "/api/migrations/apply", b" " * (65 * 1024) + b"{}", 413),
    ("bad version in body", "POST", "/api/migrations/rollback", b'{"version": "../etc"}', 400),
    ("missing version", "POST", "/api/migrations/rollback", b"{}", 400),
    ("bad version", "GET", "/api/migrations/abc", None, 400),
    ("short version", "GET", "/api/migrations/2024/details", None, 400),
    ("long version", "GET", f"/api/migrations/{'1' * 100}", None, 400),
    ("path traversal", "GET", "/api/migrations/..%2F..%2Fetc", None, 404),
    ("path traversal to log", "GET", "/api/migrations/..%2Flog", None, 400),
    ("dot dot", "GET", "/api/migrations/../../etc/passwd", None, 404),
    ("bad history filter", "GET", "/api/migrations/history?migration=x", None, 400),
    ("unknown kind", "GET", "/api/migrations/history?kind=Nope", None, 400),
    ("unknown history filter", "GET", "/api/migrations/history?since=5", None, 400),
    ("misspelt list filter", "GET", "/api/migrations?pendin=true", None, 400),
    ("query on a route without", "GET", f"/api/migrations/{V1}?verbose=true", None, 400),
    ("negative after", "GET", "/api/events?after=-1", None, 400),
    ("dry_run 0", "POST", "/api/migrations/apply", b'{"dry_run": 0}', 400),
    ("dry_run 1", "POST", "/api/migrations/apply", b'{"dry_run": 1}', 400),
    ("dry_run as a string", "POST", "/api/migrations/apply", b'{"dry_run": "false"}', 400),
    ("unknown target", "POST", "/api/migrations/apply", b'{"target_version": "nope"}', 400),
    (
        "target of 65 digits",
        "POST",
        "/api/migrations/apply",
        b'{"target_version": "%s"}' % (b"1" * 65),
        400,
    ),
    ("JSON nested 1,000 deep", "POST", "/api/migrations/apply", b"[" * 1000 + b"]" * 1000, 400),
    (
        "JSON nested 1,000 deep in a field",
        "POST",
        "/api/migrations/rollback",
        b'{"version": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        400,
    ),
    (
        "deep JSON inside a string is a string",
        "POST",
        "/api/migrations/apply",
        b'{"target_version": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',
        400,
    ),
    ("version of other digits", "GET", "/api/migrations/" + "\u0662" * 12, None, 400),
    ("version of full-width digits", "GET", "/api/migrations/" + "\uff11" * 12, None, 400),
    (
        "version with a newline",
        "POST",
        "/api/migrations/rollback",
        b'{"version": "202401010001\\n"}',
        400,
    ),
    (
        "version of other digits in a body",
        "POST",
        "/api/migrations/rollback",
        b'{"version": "%s"}' % ("\u0662" * 12).encode(),
        400,
    ),
    ("verbose=1", "GET", "/api/migration/status?verbose=1", None, 400),
    ("pending=True", "GET", "/api/migrations?pending=True", None, 400),
    ("applied=yes", "GET", "/api/migrations?applied=yes", None, 400),
    ("after 2^63", "GET", f"/api/events?after={2**63}", None, 400),
    ("after of 5,000 digits", "GET", f"/api/events?after={'9' * 5000}", None, 400),
    ("after of other digits", "GET", "/api/events?after=\u0663", None, 400),
    ("wrong method", "DELETE", "/api/migrations/apply", None, 405),
    ("GET on a POST route", "GET", "/api/migrations/apply", None, 405),
    ("unknown route", "GET", "/api/nothing", None, 404),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_answers_4xx_with_a_json_error(shared, method, path, body, status):
    app, server = shared
    headers = {"Content-Type": "application/json"} if body is not None else {}

    response = server.client.request(method, path, content=body, headers=headers)

    assert_json_error(response, status)
    assert cli_json(app, "list")[0]["state"] == "pending"
    assert not app.journal.exists()  # nothing was journaled, not even a refused run


# -- hostile input, answers and the log (issue 16 items 22 and 26) ----------------------------


@pytest.mark.parametrize(
    "last_id",
    ["\u0663".encode(), "\u00b2".encode(), b"1" * 5000, str(2**63).encode(), b"-1", b"+1"],
    ids=["Arabic-Indic digit", "superscript two", "5,000 digits", "2^63", "negative", "plus"],
)
def test_a_last_event_id_that_is_no_seq_answers_400(journaled, last_id):
    _, server = journaled  # a journal to read from

    response = server.client.get("/api/events", headers={"Last-Event-ID": last_id})

    error = assert_json_error(response, 400)
    assert error.startswith("bad Last-Event-ID ")
    assert len(error) < 140


def test_errors_echo_at_most_64_characters_of_the_input(shared):
    _, server = shared
    long = "q" * 500
    requests = [
        ("POST", "/api/migrations/apply", {long: True}),
        ("POST", "/api/migrations/rollback", {"version": long}),
        ("GET", f"/api/migrations/history?kind={long}", None),
        ("GET", f"/api/migrations/history?{long}=1", None),
        ("GET", f"/api/migrations/{long}", None),
        ("GET", f"/api/runs/{long}", None),
    ]
    for method, path, body in requests:
        response = server.client.request(method, path, json=body)
        assert 400 <= response.status_code < 500
        error = response.json()["error"]
        assert "q" * 65 not in error, error


def test_every_answer_forbids_caching_and_sniffing(shared):
    _, server = shared
    answers = [
        apiserver.get(f"{server.url}/healthz", timeout=10),
        server.client.get("/api/migrations"),
        server.client.get("/schema/openapi.json"),
        server.client.get("/api/nothing"),
        server.client.post("/api/migrations/apply", content=b"{"),
        server.client.delete("/api/migrations/apply"),
        apiserver.get(f"{server.url}/api/migrations", timeout=10),
    ]
    with server.client.stream("GET", "/api/events") as stream:
        answers.append(stream)
    for response in answers:
        assert response.headers["cache-control"] == "no-store", response.url
        assert response.headers["x-content-type-options"] == "nosniff", response.url


def test_the_access_log_never_writes_a_token_given_in_the_query(shared):
    _, server = shared
    secret = "query-token-0123456789abcdef"
    for query in (f"token={secret}", f"access_token={secret}", f"%74oken={secret}&after=1"):
        response = apiserver.get(f"{server.url}/api/events?{query}", timeout=10)
        assert_json_error(response, 401)
    assert server.client.get("/api/migrations/history", params={"Token": secret}).status_code == 400

    log = server.log.read_text()
    assert secret not in log
    assert log.count("oken=REDACTED") == 4


def test_refused_writes_answer_409_at_once(appliance, server, tmp_path):
    """50 refused writes once held workers 0.5 s each, delaying a status read by 3 s."""
    started, release = tmp_path / "started", tmp_path / "release"
    hold_lock_migration(appliance, V1, started, release)
    command = [FLYWALL, "migration", "--root", str(appliance.root), "migrate"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the CLI migrate never reached its migration"
        t0 = time.monotonic()
        statuses = [
            server.client.post("/api/migrations/apply", json={}).status_code for _ in range(10)
        ]
        took = time.monotonic() - t0
    finally:
        release.touch()
        first.communicate(timeout=60)

    assert statuses == [409] * 10
    assert took < 2.5  # retrying the lock would take 5 s
