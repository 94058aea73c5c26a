"""Notifications: an outbox read from the journal, delivered at least once (DESIGN §10).

Real servers on 127.0.0.1 only: aiosmtpd for email, http.server for the Slack webhook.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import Appliance, create_table_migration

from flywall.core import commands
from flywall.core.services import notify

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET_PATH = "T000/B000/SeCrEtWeBhOoKtOkEn"
PASSWORD = "hunter2-SeCrEt-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[str] = []

        self.over_tls: list[bool] = []

    async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(envelope.content.decode("utf-8", "replace"))
        self.over_tls.append(session.ssl is not None)
        return "250 OK"


class SmtpServer:
    """A real SMTP server on 127.0.0.1:port that can be started late and stopped."""

    def __init__(
        self, port: int, *, password: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.port = port
        self.inbox = Inbox()
        self._password = password
        self._tls = tls
        self.logins = 0
        self._controller: Controller | None = None

    def _auth(self, *args: Any) -> AuthResult:
        data = args[-1]  # (server, session, envelope, mechanism, auth_data)
        self.logins += 1
        ok = data.login == b"flywall" and data.password == (self._password or "").encode()
        return AuthResult(success=ok, handled=False)  # False: the server answers 535

    def start(self) -> None:
        extra: dict[str, Any] = {}
        if self._password is not None:
            extra = {"authenticator": self._auth, "auth_require_tls": self._tls is not None}
        if self._tls is not None:  # STARTTLS required before MAIL, AUTH only inside TLS
            extra |= {"tls_context": self._tls, "require_starttls": True}
        self._controller = Controller(
            self.inbox, hostname="127.0.0.1", port=self.port, ready_timeout=5, **extra
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def subjects(self) -> list[str]:
        """Each message's subject, unfolded (a long one is folded over lines, RFC 5322)."""
        parsed = (
            email.message_from_string(m, policy=email.policy.default) for m in self.inbox.messages
        )
        return [str(message["Subject"]) for message in parsed]


class Webhook:
    """A local HTTP server standing in for Slack's incoming webhook."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if hook.status != 200:
                    # Echo the secret path in the reason: the client must redact it.
                    self.send_response(hook.status, f"refused {self.path}")
                    self.end_headers()
                    return
                hook.posts.append(json.loads(body))
                hook.paths.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/{SECRET_PATH}"

    def texts(self) -> list[str]:
        return [p["text"] for p in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port(), password=PASSWORD)
    yield server
    server.stop()


def configure(
    app: Appliance,
    *,
    smtp_port: int | None = None,
    webhook_url: str | None = None,
    start: bool = True,
    complete: bool = True,
    email_extra: tuple[str, ...] = (),
) -> None:
    channels = [c for c, on in (("email", smtp_port), ("slack", webhook_url)) if on]
    lines = [
        f"notify_on_start = {str(start).lower()}",
        f"notify_on_complete = {str(complete).lower()}",
        "notification_channels = [" + ", ".join(f'"{c}"' for c in channels) + "]",
    ]
    if smtp_port:
        lines += [
            "email {",
            '  host = "127.0.0.1"',
            f"  port = {smtp_port}",
            '  from = "flywall@appliance.test"',
            '  to = ["ops@example.test"]',
            '  credentials_file = "smtp.credentials"',
            *email_extra,
            "}",
        ]
        creds = app.root / "etc/flywall/smtp.credentials"
        creds.parent.mkdir(parents=True, exist_ok=True)
        creds.write_text(f"flywall {PASSWORD}\n", encoding="utf-8")
        creds.chmod(0o600)
    if webhook_url:
        lines += ["slack {", f'  webhook_url = "{webhook_url}"', "}"]
    app.configure("\n".join(lines) + "\n")


def kinds(app: Appliance, kind: str) -> list[dict[str, Any]]:
    return commands.history(app.workspace(), kinds=(kind,))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert "SeCrEt" not in text


def test_start_complete_and_failure_reach_email_and_slack(
    appliance: Appliance, smtp: SmtpServer, webhook: Webhook
) -> None:
    smtp.start()
    configure(appliance, smtp_port=smtp.port, webhook_url=webhook.url)
    create_table_migration(appliance, "202401010001", "hosts")

    ok = appliance.cli("migrate")
    assert ok.returncode == 0, ok.stderr

    assert [t.split(" (run")[0] for t in webhook.texts()] == [
        f"[flywall {socket.gethostname()}] migrate started",
        f"[flywall {socket.gethostname()}] migrate completed",
    ]
    assert "planned: 202401010001" in webhook.texts()[0]
    assert "applied: 202401010001" in webhook.texts()[1]
    assert webhook.paths == [f"/services/{SECRET_PATH}"] * 2
    assert [s.split(" (run")[0].rsplit(" ", 1)[1] for s in smtp.subjects()] == [
        "started",
        "completed",
    ]

    appliance.write("202401010002_broken.sql", "-- migrate:up\nCREATE TABLE hosts (id INTEGER);\n")
    failed = appliance.cli("migrate")
    assert failed.returncode == 1
    assert "FAILED (run" in webhook.texts()[-1]
    assert "202401010002" in webhook.texts()[-1]
    assert "FAILED (run" in smtp.subjects()[-1]

    delivered = kinds(appliance, "NotificationDelivered")
    assert {d["channel"] for d in delivered} == {"email", "slack"}
    history = appliance.cli("history", "--json")
    assert_no_secret(ok.stdout, ok.stderr, failed.stdout, failed.stderr, history.stdout)

    again = appliance.cli("notify")
    assert again.returncode == 0
    assert "sent 0 notice(s)" in again.stdout
    assert len(webhook.posts) == 4


def test_a_dead_smtp_server_never_fails_the_run_and_notify_delivers_later(
    appliance: Appliance, smtp: SmtpServer
) -> None:
    configure(appliance, smtp_port=smtp.port)  # the server is not running yet
    create_table_migration(appliance, "202401010001", "hosts")

    run = appliance.cli("migrate")

    assert run.returncode == 0, run.stderr
    assert "warning: notification to email failed" in run.stderr
    failed = kinds(appliance, "NotificationFailed")
    assert [f["channel"] for f in failed] == ["email"]
    assert "after 3 tries" in failed[0]["error"]
    assert_no_secret(run.stderr, json.dumps(failed))
    assert commands.list_migrations(appliance.workspace())[0].state == "applied"

    smtp.start()
    retry = appliance.cli("notify")

    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert len(smtp.inbox.messages) == 2
    assert "migrate started" in smtp.subjects()[0]
    assert "migrate completed" in smtp.subjects()[1]
    assert "To: ops@example.test" in smtp.inbox.messages[0]


def test_notify_exits_1_naming_the_channel_while_it_is_unreachable(
    appliance: Appliance, smtp: SmtpServer
) -> None:
    configure(appliance, smtp_port=smtp.port)
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()

    result = appliance.cli("notify")

    assert result.returncode == 1
    assert "email: smtp://127.0.0.1:" in result.stdout
    assert "2 notice(s) waiting" in result.stdout


def test_a_crash_between_send_and_cursor_sends_at_most_one_duplicate(
    appliance: Appliance, webhook: Webhook
) -> None:
    """At least once: the cursor is journaled after the send, so a cut there resends one.

    The start notice goes out while the run runs (issue 16.20), so the cut stops the run
    too: the next `migrate` recovers it and delivers the rest, each notice once more at most.
    """
    configure(appliance, webhook_url=webhook.url)
    create_table_migration(appliance, "202401010001", "hosts")

    killed = appliance.cli("migrate", env={"FLYWALL_CRASH_AT": "notify-sent"})

    assert killed.returncode == -9
    assert len(webhook.posts) == 1  # "started" was sent; its cursor never written

    again = appliance.cli("migrate")
    assert again.returncode == 0, again.stderr
    assert appliance.cli("notify").returncode == 0
    assert commands.list_migrations(appliance.workspace())[0].state == "applied"

    texts = webhook.texts()
    assert texts[0] == texts[1]  # the one duplicate: the notice whose cursor was cut off
    assert " migrate started " in texts[0]
    assert len(set(texts[1:])) == len(texts) - 1  # everything else exactly once
    assert any(" migrate completed " in t for t in texts)


def test_webhook_errors_are_journaled_without_the_secret_url(
    appliance: Appliance, webhook: Webhook
) -> None:
    webhook.status = 500
    configure(appliance, webhook_url=webhook.url)
    create_table_migration(appliance, "202401010001", "hosts")

    run = appliance.cli("migrate")

    assert run.returncode == 0
    failed = kinds(appliance, "NotificationFailed")
    assert "HTTP Error 500" in failed[0]["error"]
    assert "***" in failed[0]["error"]  # the reason echoed the path; it was redacted
    assert_no_secret(run.stdout, run.stderr, json.dumps(failed))
    listed = appliance.cli("notify", "--json")
    assert_no_secret(listed.stdout, listed.stderr)
    # The port is no secret, and names the endpoint that refused: email shows its port too.
    assert json.loads(listed.stdout)[0]["target"] == f"http://127.0.0.1:{webhook.port}/***"


def test_smtp_credentials_must_be_private_and_never_leak(
    appliance: Appliance, smtp: SmtpServer
) -> None:
    smtp.start()
    configure(appliance, smtp_port=smtp.port)
    creds = appliance.root / "etc/flywall/smtp.credentials"
    creds.chmod(0o644)
    create_table_migration(appliance, "202401010001", "hosts")

    assert appliance.cli("migrate").returncode == 0
    error = kinds(appliance, "NotificationFailed")[0]["error"]
    assert "must be mode 0600" in error
    assert smtp.inbox.messages == []

    creds.chmod(0o600)
    creds.write_text(f"flywall wrong-{PASSWORD}\n", encoding="utf-8")
    assert appliance.cli("notify").returncode == 1
    error = kinds(appliance, "NotificationFailed")[-1]["error"]
    assert "Authentication" in error or "535" in error
    assert_no_secret(error)

    creds.write_text(f"flywall {PASSWORD}\n", encoding="utf-8")
    assert appliance.cli("notify").returncode == 0
    assert len(smtp.inbox.messages) == 2


def test_only_the_events_the_settings_ask_for_are_sent(
    appliance: Appliance, webhook: Webhook
) -> None:
    configure(appliance, webhook_url=webhook.url, start=False, complete=False)
    create_table_migration(appliance, "202401010001", "hosts")

    assert appliance.cli("migrate").returncode == 0

    assert webhook.posts == []
    assert kinds(appliance, "NotificationDelivered") == []  # nothing sent, nothing written


def test_deliver_retries_a_bounded_number_of_times_then_gives_up(
    appliance: Appliance, smtp: SmtpServer
) -> None:
    configure(appliance, smtp_port=smtp.port)
    create_table_migration(appliance, "202401010001", "hosts")
    commands.migrate(appliance.workspace())

    results = notify.deliver(appliance.workspace(), tries=2, backoff=(0.01,), timeout=1)

    assert results[0].error is not None
    assert results[0].error.endswith("(after 2 tries)")
    assert results[0].sent == 0
    assert results[0].waiting == 2


def test_no_channels_means_nothing_is_read_or_written(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    commands.migrate(appliance.workspace())
    before = len(commands.history(appliance.workspace()))

    assert notify.deliver(appliance.workspace()) == []
    assert len(commands.history(appliance.workspace())) == before


def test_a_channel_added_later_starts_with_the_newest_run_not_the_history(
    appliance: Appliance, webhook: Webhook
) -> None:
    """Adding a channel to a box with past runs sends the next run, not the past ones."""
    for version, table in (("202401010001", "hosts"), ("202401010002", "zones")):
        create_table_migration(appliance, version, table)
        appliance.migrate()
    configure(appliance, webhook_url=webhook.url)
    create_table_migration(appliance, "202401010003", "leases")

    run = appliance.cli("migrate")

    assert run.returncode == 0, run.stderr
    assert [t.split(" (run")[0].rsplit(" ", 1)[1] for t in webhook.texts()] == [
        "started",
        "completed",
    ]
    assert "202401010003" in webhook.texts()[0]
    started = kinds(appliance, "NotificationChannelStarted")
    newest_run = kinds(appliance, "RunStarted")[-1]
    assert [(s["channel"], s["after_seq"]) for s in started] == [("slack", newest_run["seq"] - 1)]

    again = appliance.cli("notify")

    assert again.returncode == 0
    assert "new channel" not in again.stdout
    assert "sent 0 notice(s)" in again.stdout
    assert len(kinds(appliance, "NotificationChannelStarted")) == 1


def test_notify_right_after_adding_a_channel_sends_the_newest_run_only(
    appliance: Appliance, webhook: Webhook
) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    assert appliance.cli("rollback", "--steps", "1").returncode == 0
    configure(appliance, webhook_url=webhook.url)

    result = appliance.cli("notify")

    assert result.returncode == 0, result.stderr
    assert "slack: new channel: starts after seq" in result.stdout
    assert [t.split(" (run")[0] for t in webhook.texts()] == [
        f"[flywall {socket.gethostname()}] rollback started",
        f"[flywall {socket.gethostname()}] rollback completed",
    ]


def test_a_crash_after_a_channel_starts_resumes_from_the_same_seq(
    appliance: Appliance, webhook: Webhook
) -> None:
    """Killed right after `NotificationChannelStarted`: the next delivery sends the same run.

    The channel is started by the start notice, while the run runs (issue 16.20): the cut
    stops the run too, and the next `migrate` recovers it.
    """
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    configure(appliance, webhook_url=webhook.url)
    create_table_migration(appliance, "202401010002", "zones")

    killed = appliance.cli("migrate", env={"FLYWALL_CRASH_AT": "notify-channel-started"})

    assert killed.returncode == -9
    assert webhook.posts == []

    again = appliance.cli("migrate")
    assert again.returncode == 0, again.stderr
    assert appliance.cli("notify").returncode == 0
    assert commands.list_migrations(appliance.workspace())[-1].state == "applied"

    texts = webhook.texts()
    assert " migrate started " in texts[0]
    assert "202401010002" in texts[0]  # the cut run's own start: resumed from the same seq
    assert len(set(texts)) == len(texts)
    assert any(" migrate completed " in t for t in texts)
    assert len(kinds(appliance, "NotificationChannelStarted")) == 1


# -- STARTTLS against a relay whose certificate a private CA signed ---------------------


class RelayCertificates:
    """A CA and the relay's certificate for 127.0.0.1 it signed, as PEM files."""

    def __init__(self, folder: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        def name(text: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        relay_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("test relay CA"))
            .issuer_name(name("test relay CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        relay = (
            x509.CertificateBuilder()
            .subject_name(name("127.0.0.1"))
            .issuer_name(ca.subject)
            .public_key(relay_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = folder / "relay-ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        chain, key = folder / "relay.pem", folder / "relay.key"
        chain.write_bytes(relay.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            relay_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.load_cert_chain(chain, key)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[SmtpServer, RelayCertificates]]:
    folder = tmp_path / "relay"
    folder.mkdir()
    certificates = RelayCertificates(folder)
    server = SmtpServer(free_port(), password=PASSWORD, tls=certificates.server_context)
    server.start()
    yield server, certificates
    server.stop()


def test_starttls_with_the_relays_ca_sends_and_logs_in_only_inside_tls(
    appliance: Appliance, relay: tuple[SmtpServer, RelayCertificates]
) -> None:
    server, certificates = relay
    ca_file = appliance.root / "etc/flywall/relay-ca.pem"  # paths are read under the root
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(certificates.ca_file.read_bytes())
    email = ("  starttls = true", '  ca_file = "relay-ca.pem"')
    configure(appliance, smtp_port=server.port, email_extra=email)
    create_table_migration(appliance, "202401010001", "hosts")

    run = appliance.cli("migrate")

    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr
    assert [s.split(" (run")[0].rsplit(" ", 1)[1] for s in server.subjects()] == [
        "started",
        "completed",
    ]
    assert server.inbox.over_tls == [True, True]
    assert server.logins == 2  # one login per message, each inside TLS (the relay demands it)


def test_starttls_refuses_a_relay_whose_certificate_it_cannot_verify(
    appliance: Appliance, relay: tuple[SmtpServer, RelayCertificates]
) -> None:
    """Without the CA the system's roots do not vouch for the relay: nothing is sent."""
    server, _ = relay
    configure(appliance, smtp_port=server.port, email_extra=("  starttls = true",))
    create_table_migration(appliance, "202401010001", "hosts")

    run = appliance.cli("migrate")

    assert run.returncode == 0  # a channel never changes the run's outcome
    failed = kinds(appliance, "NotificationFailed")
    assert "CERTIFICATE_VERIFY_FAILED" in failed[0]["error"]
    assert (server.inbox.messages, server.logins) == ([], 0)
    assert_no_secret(run.stdout, run.stderr, json.dumps(failed))


def test_without_starttls_the_password_never_crosses_in_clear(
    appliance: Appliance, relay: tuple[SmtpServer, RelayCertificates]
) -> None:
    server, _ = relay
    configure(appliance, smtp_port=server.port)  # starttls = false (the default)
    create_table_migration(appliance, "202401010001", "hosts")

    run = appliance.cli("migrate")

    assert run.returncode == 0
    failed = kinds(appliance, "NotificationFailed")
    assert "AUTH" in failed[0]["error"]  # the relay offers no AUTH before TLS
    assert (server.inbox.messages, server.logins) == ([], 0)


def test_an_unreadable_ca_file_is_named_and_not_retried(
    appliance: Appliance, relay: tuple[SmtpServer, RelayCertificates]
) -> None:
    server, _ = relay
    email = ("  starttls = true", '  ca_file = "/etc/ssl/no-such-ca.pem"')
    configure(appliance, smtp_port=server.port, email_extra=email)
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()

    result = appliance.cli("notify")

    assert result.returncode == 1
    missing = appliance.root / "etc/ssl/no-such-ca.pem"
    assert f"{missing}: cannot load CA certificates" in result.stdout
    assert "tries" not in kinds(appliance, "NotificationFailed")[-1]["error"]  # not retried
    assert server.inbox.messages == []


def test_notify_before_any_journal_says_so_rather_than_no_channels(
    appliance: Appliance, webhook: Webhook
) -> None:
    configure(appliance, webhook_url=webhook.url)

    result = appliance.cli("notify")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "nothing to send: no journal yet\n"
    assert not appliance.journal.exists()
