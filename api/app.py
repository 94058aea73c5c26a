"""The HTTP API: thin handlers over `flywall.core.commands` (DESIGN §10).

Every answer is the JSON the CLI prints with `--json` (the same msgspec Structs, encoded
by msgspec); every error is `{"error": "...", "status": N}`, never a traceback. Writing
work (apply, rollback) answers 202 with a run id once it holds the writer lock; a busy
writer answers 409 at once. See README, "HTTP API", for the status codes.

Annotations are evaluated at runtime here (no `from __future__ import annotations`):
litestar reads them to parse requests and to write the OpenAPI document.
"""

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
)

from flywall.api import answers
from flywall.api.answers import DebugReport, HistoryItem
from flywall.api.runs import RunAccepted, Runs, RunStatus
from flywall.api.security import token_name
from flywall.core import commands
from flywall.core.commands import (
    Workspace,
    errors,
    ev,
)
from flywall.core.commands.reports import DryRunReport, MigrationRow, RunReport, StatusReport

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
POLL_SECONDS = 0.15
"""How often the event stream looks for new journal events."""

_VERSION = re.compile(r"[0-9]{12,64}")  # ASCII: `\d` also matches other scripts' digits
Version = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{12,64}$", max_length=64)]
MAX_SEQ = 2**63 - 1
"""The largest seq SQLite can hold: beyond it a number is no seq, and a 400."""
MAX_DEPTH = 32
"""JSON nested deeper is refused before decoding (1,000 levels exhausted the decoder)."""
ECHO = 64
"""Characters of a client's input an error message repeats, at most."""
HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))
"""On every answer: status and tokens must not sit in caches; JSON is never sniffed as HTML."""
KINDS = frozenset(t.__name__ for t in ev.AnyEvent.__args__)

# -- bodies -------------------------------------------------------------------------------


class ApplyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """POST /api/migrations/apply: apply pending migrations (up to `target_version`)."""

    target_version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    dry_run: bool = False


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """POST /api/migrations/rollback: roll back one applied migration."""

    version: Version


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer."""

    error: str
    status: int


# -- the OpenAPI document -------------------------------------------------------------------

AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
"""Every route but /healthz: `Authorization: Bearer <token>`."""
_WHEN = {
    400: "malformed or invalid input (JSON, field, type, version, filter), or nothing to do",
    401: "missing or wrong bearer token",
    404: "unknown migration or run",
    409: "busy: another run holds the writer lock; an illegal transition; or migrations are "
    "disabled (`enabled = false`)",
    413: "request body over 64 KiB",
    422: "validation failed: checksum mismatch, drift, tampered or corrupt journal",
}


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    """Document the error answers a route gives: each `{error, status}`."""
    return {
        code: ResponseSpec(ErrorBody, description=_WHEN[code], generate_examples=False)
        for code in codes
    }


READ = (400, 401, 422)
"""What every authenticated read may answer besides 200."""


# -- errors -------------------------------------------------------------------------------


def status_of(error: Exception) -> int:
    """Map a user-causable core error to its HTTP status (README, "HTTP API")."""
    match error:
        case errors.Busy() | errors.IllegalTransition() | errors.MigrationsDisabled():
            return HTTP_409_CONFLICT
        case errors.ValidationFailed() | errors.BrokenMigration():  # a broken journal too
            return HTTP_422_UNPROCESSABLE_ENTITY
        case errors.UsageError() | errors.NothingToDo():
            return HTTP_400_BAD_REQUEST
        case _:  # the appliance's own files (settings, migrations, journal) are at fault
            return HTTP_500_INTERNAL_SERVER_ERROR


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        content=ErrorBody(error=message, status=status),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def echo(text: str) -> str:
    """Quote a client's input for an error message, cut at `ECHO` characters."""
    return repr(text[:ECHO]) + ("..." if len(text) > ECHO else "")


_QUOTED = re.compile(r"`([^`]*)`")


def _cut_quoted(message: str) -> str:
    """Cut every `quoted` part of a decoder's message (a field name, a value) at `ECHO`."""
    return _QUOTED.sub(lambda m: f"`{m[1][:ECHO]}...`" if len(m[1]) > ECHO else m[0], message)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    message = exc.detail
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        found = [
            f"{item.get('key', '')}: {item.get('message', '')}".strip(": ")
            for item in exc.extra
            if isinstance(item, dict)
        ]
        message = f"invalid request: {'; '.join(found)}" if found else "invalid request"
    return _error(exc.status_code, _cut_quoted(message), dict(exc.headers or {}))


def _bad_request(detail: str) -> HTTPException:
    return HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=detail)


async def _screen(request: Request[Any, Any, Any]) -> None:
    """Refuse, before litestar parses anything, what its lenient parsing would accept.

    litestar converts query values and JSON bodies leniently: `?verbose=1`, `"dry_run": 0`
    and `"dry_run": "false"` would all pass, and the last two would start a real apply.
    A JSON body nested 1,000 deep exhausted the decoder's recursion (a 500).
    """
    parameters = request.route_handler.parsed_fn_signature.parameters
    _known_query(request, set(parameters) - {"request", "data"})
    for name, values in request.query_params.dict().items():
        if parameters[name].annotation is bool and any(v not in {"true", "false"} for v in values):
            raise _bad_request(f"invalid request: {name}: expected true or false")
    body = parameters.get("data")
    if body is not None:
        raw = await request.body()
        if json_depth(raw) > MAX_DEPTH:
            raise _bad_request(f"invalid request: JSON nested deeper than {MAX_DEPTH} levels")
        try:
            msgspec.json.decode(raw, type=body.annotation)  # strict: a bool is a JSON bool
        except msgspec.DecodeError as e:
            raise _bad_request(f"invalid request: {_decode_message(e)}") from None


def _known_query(request: Request[Any, Any, Any], taken: set[str]) -> None:
    """Refuse a query parameter the route does not take: `?since=5` must not answer all."""
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        use = f"; use {', '.join(sorted(taken))}" if taken else ""
        raise _bad_request(f"unknown query parameter {echo(unknown[0])}{use}")


_AT = re.compile(r"(?s)(.*) - at `\$\.?([^`]*)`")


def _decode_message(error: msgspec.DecodeError) -> str:
    """`Expected `bool`, got `int` - at `$.dry_run`` -> `dry_run: Expected ...`."""
    message = str(error)
    if found := _AT.fullmatch(message):
        message = f"{found[2]}: {found[1]}" if found[2] else found[1]
    return _cut_quoted(message)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """Return how deep `raw`'s arrays and objects nest (strings skipped), without decoding."""
    depth = deepest = 0
    for byte in _STRING.sub(b"", raw).translate(None, _NOT_BRACKET):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


async def _secure_headers(message: Any, _: Any) -> None:
    """Add `HEADERS` to every answer, errors and event streams included."""
    if message["type"] == "http.response.start":
        names = {name for name, _ in HEADERS}
        kept = [(n, v) for n, v in message.get("headers", []) if bytes(n).lower() not in names]
        message["headers"] = [*kept, *HEADERS]  # the event stream's `no-cache` too


def _flywall_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error(status_of(exc), str(exc))


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # The HTTP boundary: a bug must not leak its traceback to the client; it goes to the log.
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "internal error (see the server log)")


# -- auth ---------------------------------------------------------------------------------


class TokenAuth(AbstractAuthenticationMiddleware):
    """`Authorization: Bearer <token>` on every route but those marked `exclude_from_auth`."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        """Return the token's name as the user, or refuse with 401."""
        scheme, _, given = connection.headers.get("authorization", "").partition(" ")
        name = token_name(connection.app.state.tokens, given.strip())
        if scheme.lower() != "bearer" or name is None:
            raise NotAuthorizedException(
                "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        return AuthenticationResult(user=name, auth=None)


def _workspace(request: Request[Any, Any, Any]) -> Workspace:
    """A fresh Workspace per request: migration files and settings may change under us."""
    return request.app.state.workspace()


def _actor(request: Request[Any, Any, Any]) -> ev.Actor:
    return ev.current_actor(via="api", user=request.user)


def _version(version: str) -> str:
    if not _VERSION.fullmatch(version) or len(version) > 64:  # noqa: PLR2004
        raise _bad_request(f"bad version {echo(version)}: a version is 12 to 64 ASCII digits")
    return version


def _row(ws: Workspace, version: str) -> MigrationRow:
    """Return the migration's `list` row. :raises NotFoundException: unknown version."""
    for row in commands.list_migrations(ws):
        if row.version == version:
            return row
    raise NotFoundException(f"unknown migration {version}")


# -- handlers -----------------------------------------------------------------------------


@get("/healthz", exclude_from_auth=True, sync_to_thread=False, responses=_errors(400))
def healthz() -> dict[str, str]:
    """Liveness, without auth: the server answers."""
    return {"status": "ok"}


@get("/api/migration/status", sync_to_thread=True, security=AUTH, responses=_errors(*READ))
def status(request: Request[Any, Any, Any], verbose: bool = False) -> StatusReport:
    """`status --json`: component versions, counts, journal head, interruptions."""
    return commands.status(_workspace(request), verbose=verbose)


@get("/api/migrations", sync_to_thread=True, security=AUTH, responses=_errors(*READ))
def list_migrations(
    request: Request[Any, Any, Any],
    pending: bool = False,
    applied: bool = False,
) -> list[MigrationRow]:
    """`list --json`: every migration with its state."""
    return commands.list_migrations(_workspace(request), pending=pending, applied=applied)


@get("/api/migrations/history", sync_to_thread=True, security=AUTH, responses=_errors(*READ))
def history(
    request: Request[Any, Any, Any],
    migration: Annotated[str | None, Parameter(pattern=r"^[0-9]{12,64}$")] = None,
    kind: Annotated[str | None, Parameter(max_length=64)] = None,
) -> list[HistoryItem]:
    """`history --json`: every journal event, oldest first (of one migration, one kind)."""
    if migration is not None:
        _version(migration)
    if kind is not None and kind not in KINDS:
        raise _bad_request(f"unknown kind {echo(kind)}")
    items = commands.history(_workspace(request), migration=migration)
    return answers.history([item for item in items if kind is None or item["kind"] == kind])


@get(
    "/api/migrations/{version:str}",
    sync_to_thread=True,
    security=AUTH,
    responses=_errors(*READ, 404),
)
def migration(request: Request[Any, Any, Any], version: str) -> MigrationRow:
    """One migration's `list` row."""
    return _row(_workspace(request), _version(version))


@get(
    "/api/migrations/{version:str}/details",
    sync_to_thread=True,
    security=AUTH,
    responses=_errors(*READ, 404),
)
def details(request: Request[Any, Any, Any], version: str) -> DebugReport:
    """`debug V --json`: file, checksums, state, events, log, SQL, backups."""
    ws = _workspace(request)
    _row(ws, _version(version))
    return answers.debug(commands.debug(ws, version))


@get(
    "/api/migrations/{version:str}/log",
    media_type=MediaType.TEXT,
    sync_to_thread=True,
    security=AUTH,
    responses=_errors(*READ, 404),
)
def migration_log(request: Request[Any, Any, Any], version: str) -> str:
    """`log V`, as text: what the migration wrote with ctx.log(), run by run."""
    ws = _workspace(request)
    _row(ws, _version(version))
    return "".join(line.render() for line in answers.log(commands.log(ws, version)))


@post(
    "/api/migrations/apply",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    security=AUTH,
    responses={
        202: ResponseSpec(RunAccepted, description="the run holds the lock and goes on"),
        200: ResponseSpec(DryRunReport, description="a dry run's report"),
        **_errors(*READ, 409, 413),
    },
)
def apply(
    request: Request[Any, Any, Any], data: ApplyRequest
) -> Response[RunAccepted | DryRunReport]:
    """Apply pending migrations: 202 with a run id; a dry run answers 200 with its report."""
    ws, actor = _workspace(request), _actor(request)
    report = commands.dry_run_if_wanted(
        ws, asked=data.dry_run, target=data.target_version, actor=actor
    )
    if report is not None:
        return Response(report, status_code=200)
    commands.check_target(ws, data.target_version)  # a 400 now, not a failed run later
    run_id = request.app.state.runs.start(
        "migrate",
        lambda run_id, on_locked: commands.migrate(
            ws, target=data.target_version, actor=actor, run_id=run_id, on_locked=on_locked
        ),
    )
    return Response(RunAccepted(run_id=run_id), status_code=HTTP_202_ACCEPTED)


@post(
    "/api/migrations/rollback",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    security=AUTH,
    responses=_errors(*READ, 404, 409, 413),
)
def rollback(request: Request[Any, Any, Any], data: RollbackRequest) -> RunAccepted:
    """Roll back one migration via its `down`: 202 with a run id."""
    ws, actor = _workspace(request), _actor(request)
    _row(ws, _version(data.version))
    commands.check_target(ws, None)  # a 422 now for a broken file, not a failed run later
    run_id = request.app.state.runs.start(
        "rollback",
        lambda run_id, on_locked: commands.rollback(
            ws, version=data.version, actor=actor, run_id=run_id, on_locked=on_locked
        ),
    )
    return RunAccepted(run_id=run_id)


@post(
    "/api/migrations/confirm",
    sync_to_thread=True,
    status_code=200,
    security=AUTH,
    responses=_errors(*READ, 409),
)
def confirm(request: Request[Any, Any, Any]) -> RunReport:
    """`confirm --json`: the runs awaiting confirmation are kept."""
    return commands.confirm(_workspace(request), actor=_actor(request))


@get(
    "/api/runs/{run_id:str}", sync_to_thread=False, security=AUTH, responses=_errors(400, 401, 404)
)
def run(request: Request[Any, Any, Any], run_id: str) -> RunStatus:
    """A run this server started: running, then completed or failed with its report."""
    found = request.app.state.runs.get(run_id)
    if found is None:
        raise NotFoundException(f"unknown run {echo(run_id)}")
    return found


@get(
    "/api/events",
    security=AUTH,
    responses={
        200: ResponseSpec(
            str,
            media_type="text/event-stream",
            description="`id: seq`, `event: kind`, `data:` the history item, as appended",
            generate_examples=False,
        ),
        **_errors(*READ),
    },
)
async def events(
    request: Request[Any, Any, Any],
    after: Annotated[int, Parameter(ge=0, le=MAX_SEQ)] = 0,
) -> ServerSentEvent:
    """Every journal event as it is appended (after seq `after` or `Last-Event-ID`)."""
    last_id = request.headers.get("last-event-id", "")
    start = _seq(last_id) if last_id else after
    return ServerSentEvent(_follow(_workspace(request), start))


_SEQ = re.compile(r"[0-9]{1,19}")


def _seq(text: str) -> int:
    """Parse `Last-Event-ID`: a journal seq, ASCII digits up to `MAX_SEQ`."""
    if not _SEQ.fullmatch(text) or int(text) > MAX_SEQ:
        raise _bad_request(f"bad Last-Event-ID {echo(text)}: expected a seq (0 to {MAX_SEQ})")
    return int(text)


async def _follow(ws: Workspace, after: int) -> AsyncIterator[Any]:
    """Poll the journal by seq; each event once, in order, as the history item's JSON."""
    journal = None
    try:
        while True:
            if journal is None:
                journal = ws.read_journal()  # None until the first run
            if journal is not None:
                for row in list(journal.read(after=after)):
                    after = row.seq
                    yield ServerSentEventMessage(
                        id=row.seq,
                        event=row.kind,
                        data=msgspec.json.encode(commands.event_dict(row)).decode(),
                    )
            await asyncio.sleep(POLL_SECONDS)
    finally:
        if journal is not None:
            journal.close()


# -- the app ------------------------------------------------------------------------------


def create_app(workspace: Callable[[], Workspace], tokens: Sequence[tuple[str, str]]) -> Litestar:
    """Build the app over the appliance `workspace()` loads, for the given `(name, token)`s."""
    return Litestar(
        route_handlers=[
            healthz,
            status,
            list_migrations,
            history,
            migration,
            details,
            migration_log,
            apply,
            rollback,
            confirm,
            run,
            events,
        ],
        middleware=[DefineMiddleware(TokenAuth, exclude_http_methods=[])],
        before_request=_screen,
        before_send=[_secure_headers],
        exception_handlers={
            HTTPException: _http_error,
            errors.FlywallError: _flywall_error,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(
            title="flywall-migration",
            version="1",
            render_plugins=[JsonRenderPlugin()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="a token of the tokens file (migration-api.tokens)",
                    )
                }
            ),
            create_examples=False,
        ),
        request_max_body_size=MAX_BODY,
        state=_state(workspace, tokens),
        debug=False,
    )


def _state(workspace: Callable[[], Workspace], tokens: Sequence[tuple[str, str]]) -> Any:
    from litestar.datastructures import State

    return State({"workspace": workspace, "tokens": list(tokens), "runs": Runs()})
