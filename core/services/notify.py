"""The notification outbox: start, complete and failure notices read from the journal.

Nothing is queued anywhere else (DESIGN §10): the journal *is* the outbox. A notice is a
`RunStarted` of a migrate or rollback (`notify_on_start`), the `RunFinished` "completed" of
one (`notify_on_complete`), or any run's `RunFinished` "failed" or "interrupted"
(`notify_on_failure`; its error names the `MigrationFailed`). Each channel in
`notification_channels` (`email`, `slack`) has a cursor: the `through_seq` of its newest
`NotificationDelivered`, journaled only *after* the send succeeded. Delivery is therefore at
least once: a crash between a send and its cursor (crash point ``notify-sent``) sends that
one notice again on the next delivery, and never loses it. A channel met for the first time
starts with the newest run (`NotificationChannelStarted`): adding one to a box with years of
history does not mail it that history.

A channel that cannot be reached is retried a bounded number of times, then journals
`NotificationFailed` (its error with every secret redacted) and waits for the next run or
`notify`; it never blocks a run for long nor changes a run's outcome. Secrets (the SMTP
password, the webhook URL's path) never reach an event, an error or the output.

Delivery is one step of the core, not of a face: every writing command opens an `Engine`,
and the engine hands its run to a `Courier` (below). The courier sends the start notice
from a background thread the moment `RunStarted` is journaled (a dead channel cannot delay
the run), and delivers everything else once the run has closed and released its lock,
after waiting (bounded) for the start notice, so a start never arrives after its end.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import msgspec

from flywall.core.model import events as ev
from flywall.core.model.errors import Busy, FlywallError
from flywall.core.runtime.crash import crashpoint
from flywall.core.runtime.recorder import append_events

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from flywall.core.appliance.workspace import Workspace
    from flywall.journal import Journal

TRIES = 3
"""Attempts per notice and channel before `NotificationFailed` is journaled."""
BACKOFF = (0.5, 1.0)
"""Seconds to wait before the second and third attempt."""
TIMEOUT = 5.0
"""Seconds for any one connection or request."""
LOCK_WAIT = 30.0
"""How long a delivery waits for another one (they never send the same notice twice)."""

START_WAIT = 2 * TIMEOUT * TRIES
"""How long the end-of-run delivery waits for the start notice's thread (then goes on: the
outbox lock still keeps the order, and `notify` retries what is left)."""

_REHEARSALS = ("migrate --dry-run", "test")
"""Runs on copies: they change nothing, so they start and complete no notice."""

log = logging.getLogger(__name__)
"""Where delivery says a channel failed: the CLI prints it on stderr, the API logs it."""


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """One message to send: what the journal event at `seq` means for a person."""

    seq: int
    run_id: str
    what: Literal["start", "complete", "failure"]
    subject: str
    text: str


class ChannelResult(msgspec.Struct, kw_only=True):
    """What one delivery did for one channel; `target` is shown with secrets redacted."""

    channel: str
    target: str
    sent: int = 0
    through_seq: int = 0
    waiting: int = 0
    error: str | None = None
    started_after: int | None = None
    """Set when this delivery met the channel first: it starts after this seq (the newest
    run), and the older runs are not sent to it."""


class ChannelError(Exception):
    """A channel's settings make sending impossible (a missing key, a bad file mode)."""


def deliver(
    ws: Workspace,
    *,
    channels: Sequence[str] | None = None,
    tries: int = TRIES,
    backoff: Sequence[float] = BACKOFF,
    timeout: float = TIMEOUT,
) -> list[ChannelResult]:
    """Send every notice each channel has not had yet, oldest first; journal each cursor.

    Safe to call any time (after every writing command, and by `notify`): with no channel
    configured, or no journal yet, it returns at once and writes nothing.

    :param channels: only these of the configured channels (default: all).
    :param tries: attempts per notice; between them it sleeps `backoff` seconds.
    :raises JournalFailed: the journal cannot be written.
    """
    configured = ws.settings.notification_channels
    channels = [c for c in configured if channels is None or c in channels]
    if not channels or not ws.paths.journal.exists():
        return []
    results: list[ChannelResult] = []
    with _outbox_lock(ws.paths.journal), ws.write_journal() as journal:
        _check_chain(journal)
        for channel in channels:
            result = ChannelResult(channel=channel, target=describe(ws, channel))
            results.append(result)
            cursor = _cursor(journal, channel)
            if cursor is None:
                cursor = result.started_after = _start_channel(journal, channel)
            result.through_seq = cursor
            notices = pending(ws, journal, result.through_seq)
            for i, notice in enumerate(notices):
                send = functools.partial(_send, ws, channel, notice, timeout)
                try:
                    _with_retries(send, tries, backoff)
                except _SendFailed as e:
                    result.error, result.waiting = str(e), len(notices) - i
                    failed = ev.NotificationFailed(
                        channel=channel, through_seq=notice.seq, error=str(e)
                    )
                    append_events(journal, [failed])
                    break
                crashpoint("notify-sent")
                done = ev.NotificationDelivered(channel=channel, through_seq=notice.seq)
                append_events(journal, [done])
                result.sent, result.through_seq = result.sent + 1, notice.seq
    return results


class Courier:
    """Delivery around one run: its start notice in the background, the rest after it.

    The engine calls `on_event` for each journaled event and `finish` once the run has
    released its lock; faces (CLI, API) deliver nothing themselves.
    """

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._start: threading.Thread | None = None
        self._start_results: list[ChannelResult] = []

    def on_event(self, event: ev.Event) -> None:
        """Send the start notice now, from a daemon thread, when the run starts."""
        wanted = self.ws.settings.notify_on_start and self._start is None
        if wanted and isinstance(event, ev.RunStarted) and event.command not in _REHEARSALS:
            self._start = threading.Thread(
                target=self._send_start, name="notify-start", daemon=True
            )
            self._start.start()

    def _send_start(self) -> None:
        self._start_results = deliver_and_warn(self.ws)

    def finish(self, *, interrupted: bool) -> None:
        """Deliver what the run left (also after a failure; not after ^C: it would hold it).

        An interrupted run's notice waits in the journal for the next delivery. A channel
        the start notice found dead is not tried again in the same run: one run, one wait.
        """
        if self._start is not None:
            self._start.join(START_WAIT)
        if interrupted:
            return
        dead = {r.channel for r in self._start_results if r.error is not None}
        alive = [c for c in self.ws.settings.notification_channels if c not in dead]
        if alive:
            deliver_and_warn(self.ws, alive)


def deliver_and_warn(ws: Workspace, channels: Sequence[str] | None = None) -> list[ChannelResult]:
    """Deliver; a dead channel is a logged warning, never the command's failure."""
    try:
        results = deliver(ws, channels=channels)
    except (FlywallError, OSError) as e:
        log.warning("warning: notifications not delivered: %s", e)
        return []
    for r in results:
        if r.error is not None:
            log.warning(
                "warning: notification to %s failed: %s (retry with `flywall migration notify`)",
                r.channel,
                r.error,
            )
    return results


def _check_chain(journal: Journal) -> None:
    """Never extend (nor report from) a journal whose chain is broken.

    As a writer's pre-flight: the events after the chain's verified point (`chaincheck`);
    raises JournalTampered (translated by the workspace).
    """
    from flywall.core.runtime.chaincheck import check_chain

    check_chain(journal)


def pending(ws: Workspace, journal: Journal, after: int) -> list[Notice]:
    """Return the notices after seq `after` that the settings ask for, oldest first."""
    notices: list[Notice] = []
    for seq, run_id, body in journal.connection.execute(
        "SELECT seq, run_id, body FROM events WHERE seq > ? "
        "AND kind IN ('RunStarted', 'RunFinished') ORDER BY seq",
        (after,),
    ):
        try:
            event = ev.decode(body)
        except msgspec.DecodeError:
            continue  # `journal verify` reports it; a notice cannot be made of it
        started = event if isinstance(event, ev.RunStarted) else _run_started(journal, run_id)
        if started is None:
            continue
        made = _notice(ws, event, started, run_id)
        if made is not None:
            what, subject, text = made
            notices.append(Notice(seq=seq, run_id=run_id, what=what, subject=subject, text=text))
    return notices


def _notice(
    ws: Workspace, event: ev.Event, started: ev.RunStarted, run_id: str
) -> tuple[Literal["start", "complete", "failure"], str, str] | None:
    """Say what `event` means for a person, if the settings ask to be told."""
    s = ws.settings
    command, who = started.command, f"{started.actor.user}@{started.actor.host}"
    head = f"[flywall {started.actor.host}] {command}"
    ours = command not in _REHEARSALS
    match event:
        case ev.RunStarted(planned=planned) if s.notify_on_start and ours:
            subject = f"{head} started (run {run_id})"
            return "start", subject, f"{subject} by {who}; planned: {', '.join(planned) or '-'}"
        case ev.RunFinished(outcome="completed", done=done) if s.notify_on_complete and ours:
            subject = f"{head} completed (run {run_id})"
            verb = {"migrate": "applied", "rollback": "rolled back"}.get(command, "done")
            return "complete", subject, f"{subject} by {who}; {verb}: {', '.join(done) or '-'}"
        case ev.RunFinished(outcome="failed" | "interrupted" as outcome, done=done, error=error):
            if not s.notify_on_failure:
                return None
            subject = f"{head} {outcome.upper()} (run {run_id})"
            detail = error or "the run was cut off (power loss or kill); recovery resolved it"
            return (
                "failure",
                subject,
                f"{subject} by {who}: {detail}; done: {', '.join(done) or '-'}",
            )
    return None


def describe(ws: Workspace, channel: str) -> str:
    """Name a channel's destination without its secrets."""
    if channel == "email" and ws.settings.email is not None:
        e = ws.settings.email
        return f"smtp://{e.host}:{e.port} to {', '.join(e.to) or '(nobody)'}"
    if channel == "slack" and ws.settings.slack is not None and ws.settings.slack.webhook_url:
        from urllib.parse import urlsplit

        url = urlsplit(ws.settings.slack.webhook_url)
        host = url.netloc.rpartition("@")[2]  # the port stays (as email's), any user:password not
        return f"{url.scheme}://{host}/***"
    return channel


def _cursor(journal: Journal, channel: str) -> int | None:
    """Return the seq through which `channel` has had its notices; None if never met.

    A channel is met once it has any outbox event: a delivery, a failure (its notice still
    waits: the cursor stays where it was) or the `NotificationChannelStarted` of its start.
    """
    through: int | None = None
    for (body,) in journal.connection.execute(
        "SELECT body FROM events WHERE kind IN "
        "('NotificationDelivered', 'NotificationFailed', 'NotificationChannelStarted') "
        "ORDER BY seq"
    ):
        try:
            event = ev.decode(body)
        except msgspec.DecodeError:
            continue
        match event:
            case ev.NotificationDelivered(channel=c, through_seq=seq) if c == channel:
                through = max(through or 0, seq)
            case ev.NotificationChannelStarted(channel=c, after_seq=seq) if c == channel:
                through = max(through or 0, seq)
            case ev.NotificationFailed(channel=c) if c == channel:
                through = through or 0
    return through


def _start_channel(journal: Journal, channel: str) -> int:
    """Journal where a channel met for the first time begins; return that seq.

    It begins just before the newest run's `RunStarted`: the run during which it was added
    (delivery follows every writing command) reaches it, the journal's older runs do not.
    The event is written before any send, so a crash after it resumes from the same seq.
    """
    row = journal.connection.execute(
        "SELECT max(seq) FROM events WHERE kind = 'RunStarted'"
    ).fetchone()
    assert row is not None  # an aggregate always returns one row
    (newest_run,) = row
    after = newest_run - 1 if newest_run else journal.head()[0]
    started = ev.NotificationChannelStarted(channel=channel, after_seq=after)
    append_events(journal, [started])
    crashpoint("notify-channel-started")
    return after


def _run_started(journal: Journal, run_id: str) -> ev.RunStarted | None:
    if not run_id:
        return None
    row = journal.connection.execute(
        "SELECT body FROM events WHERE run_id = ? AND kind = 'RunStarted' ORDER BY seq LIMIT 1",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    try:
        event = ev.decode(row[0])
    except msgspec.DecodeError:
        return None
    return event if isinstance(event, ev.RunStarted) else None


@contextmanager
def _outbox_lock(journal_path: Path) -> Iterator[None]:
    """Serialise deliveries (not runs): two at once would send the same notice twice."""
    path = journal_path.with_name(journal_path.name + ".notify.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Busy("busy: another notification delivery is still running") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock


# -- sending ------------------------------------------------------------------------


class _SendFailed(Exception):
    """Every attempt failed; the message is already redacted."""


def _with_retries(send: Callable[[], None], tries: int, backoff: Sequence[float]) -> None:
    import http.client

    error = "not attempted"
    for attempt in range(max(tries, 1)):
        if attempt:
            time.sleep(backoff[min(attempt - 1, len(backoff) - 1)] if backoff else 0)
        try:
            send()
        except ChannelError as e:  # settings, not the network: retrying cannot help
            raise _SendFailed(str(e)) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            error = str(e)
        else:
            return
    raise _SendFailed(f"{error} (after {max(tries, 1)} tries)")


def _send(ws: Workspace, channel: str, notice: Notice, timeout: float) -> None:
    import http.client

    secrets = _secrets(ws)
    try:
        if channel == "email":
            _send_email(ws, notice, timeout)
        elif channel == "slack":
            _send_slack(ws, notice, timeout)
        else:
            raise ChannelError(f"unknown channel {channel!r}")
    except (ChannelError, OSError, ValueError, http.client.HTTPException) as e:
        # Re-raise with a message that cannot carry a secret (nor chain to one).
        text = redact(f"{type(e).__name__}: {e}", secrets)
        raise (ChannelError(text) if isinstance(e, ChannelError) else OSError(text)) from None


def _send_email(ws: Workspace, notice: Notice, timeout: float) -> None:
    import smtplib
    import socket
    from email.message import EmailMessage

    cfg = ws.settings.email
    if cfg is None or not cfg.to:
        raise ChannelError("migration.email.to names nobody")
    credentials = _credentials(ws)
    message = EmailMessage()
    message["Subject"] = notice.subject
    message["From"] = cfg.from_ or f"flywall-migration@{socket.gethostname()}"
    message["To"] = ", ".join(cfg.to)
    message.set_content(notice.text + "\n")
    with smtplib.SMTP(cfg.host, cfg.port, timeout=timeout) as smtp:
        if cfg.starttls:
            smtp.starttls(context=_tls_context(ws))
        if credentials is not None:
            smtp.login(*credentials)
        smtp.send_message(message)


def _tls_context(ws: Workspace) -> ssl.SSLContext:
    """Verify the relay's certificate and name: against `ca_file` if given, else the system's.

    An unreadable `ca_file` is a settings error (named, never retried); the context never
    turns verification off, so the password goes only to the relay the certificate names.
    """
    import ssl

    ca_file = ws.paths.email_ca_file
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as e:  # ssl.SSLError is one: a file that is not PEM certificates
        raise ChannelError(f"{ca_file}: cannot load CA certificates: {e}") from e


def _send_slack(ws: Workspace, notice: Notice, timeout: float) -> None:
    import urllib.request
    from urllib.parse import urlsplit

    url = ws.settings.slack.webhook_url if ws.settings.slack else None
    if not url or urlsplit(url).scheme not in ("https", "http"):
        raise ChannelError("migration.slack.webhook_url must be an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=msgspec.json.encode({"text": notice.text}),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        response.read(4096)


def _credentials(ws: Workspace) -> tuple[str, str] | None:
    """Read `user password` from the credentials file, which must be mode 0600."""
    path = ws.paths.email_credentials_file
    if path is None:
        return None
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ChannelError(f"{path}: cannot read the SMTP credentials file") from e
    if mode & 0o077:
        raise ChannelError(f"{path}: SMTP credentials file must be mode 0600 (it is {mode:04o})")
    parts = text.strip().split(None, 1)
    if len(parts) != 2:  # noqa: PLR2004 - user and password
        raise ChannelError(f"{path}: expected one line `user password`")
    return parts[0], parts[1]


def _secrets(ws: Workspace) -> list[str]:
    found: list[str] = []
    if ws.settings.slack is not None and ws.settings.slack.webhook_url:
        from urllib.parse import urlsplit

        url = urlsplit(ws.settings.slack.webhook_url)
        found += [ws.settings.slack.webhook_url, url.path, url.query]
        found += [part for part in url.path.split("/") if len(part) >= 6]  # noqa: PLR2004
    try:
        credentials = _credentials(ws)
    except ChannelError:
        credentials = None
    if credentials is not None:
        found.append(credentials[1])
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)  # noqa: PLR2004


def redact(text: str, secrets: Sequence[str]) -> str:
    """Replace every secret in `text` with ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
