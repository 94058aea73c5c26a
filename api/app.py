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
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
)

from flywall.api.runs import RunAccepted, Runs, RunStatus
from flywall.api.security import token_name
from flywall.core import commands, errors
from flywall.core import events as ev
from flywall.core.commands import MigrationRow, StatusReport
from flywall.core.dryrun import DryRunReport
from flywall.core.engine import RunReport
from flywall.core.workspace import Workspace
from flywall.journal import JournalCorrupt, JournalError, JournalUnreadable

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
POLL_SECONDS = 0.15
"""How often the event stream looks for new journal events."""

_VERSION = re.compile(r"\d{12,}")
Version = Annotated[str, msgspec.Meta(pattern=r"^\d{12,}$", max_length=64)]
KINDS = frozenset(t.__name__ for t in ev.AnyEvent.__args__)  # type: ignore[attr-defined]

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


# -- errors -------------------------------------------------------------------------------


def status_of(error: Exception) -> int:
    """Map a user-causable core error to its HTTP status (README, "HTTP API")."""
    match error:
        case errors.Busy() | errors.IllegalTransition():
            return HTTP_409_CONFLICT
        case errors.ValidationFailed() | JournalCorrupt() | JournalUnreadable():
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


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    message = exc.detail
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        found = [
            f"{item.get('key', '')}: {item.get('message', '')}".strip(": ")
            for item in exc.extra
            if isinstance(item, dict)
        ]
        message = f"invalid request: {'; '.join(found)}" if found else "invalid request"
    return _error(exc.status_code, message, dict(exc.headers or {}))


def _known_query(request: Request[Any, Any, Any]) -> None:
    """Refuse a query parameter the route does not take: `?since=5` must not answer all."""
    taken = set(request.route_handler.parsed_fn_signature.parameters) - {"request"}
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        use = f"; use {', '.join(sorted(taken))}" if taken else ""
        detail = f"unknown query parameter {unknown[0][:64]!r}{use}"
        raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=detail)


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
        raise HTTPException(
            status_code=HTTP_400_BAD_REQUEST,
            detail=f"bad version {version[:64]!r}: a version is 12 or more digits",
        )
    return version


def _row(ws: Workspace, version: str) -> MigrationRow:
    """Return the migration's `list` row. :raises NotFoundException: unknown version."""
    for row in commands.list_migrations(ws):
        if row.version == version:
            return row
    raise NotFoundException(f"unknown migration {version}")


# -- handlers -----------------------------------------------------------------------------


@get("/healthz", exclude_from_auth=True, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Liveness, without auth: the server answers."""
    return {"status": "ok"}


@get("/api/migration/status", sync_to_thread=True)
def status(request: Request[Any, Any, Any], verbose: bool = False) -> StatusReport:
    """`status --json`: component versions, counts, journal head, interruptions."""
    return commands.status(_workspace(request), verbose=verbose)


@get("/api/migrations", sync_to_thread=True)
def list_migrations(
    request: Request[Any, Any, Any],
    pending: bool = False,
    applied: bool = False,
) -> list[MigrationRow]:
    """`list --json`: every migration with its state."""
    return commands.list_migrations(_workspace(request), pending=pending, applied=applied)


@get("/api/migrations/history", sync_to_thread=True)
def history(
    request: Request[Any, Any, Any], migration: str | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    """`history --json`: every journal event, oldest first (of one migration, one kind)."""
    if migration is not None:
        _version(migration)
    if kind is not None and kind not in KINDS:
        raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=f"unknown kind {kind!r}")
    items = commands.history(_workspace(request), migration=migration)
    return [item for item in items if kind is None or item["kind"] == kind]


@get("/api/migrations/{version:str}", sync_to_thread=True)
def migration(request: Request[Any, Any, Any], version: str) -> MigrationRow:
    """One migration's `list` row."""
    return _row(_workspace(request), _version(version))


@get("/api/migrations/{version:str}/details", sync_to_thread=True)
def details(request: Request[Any, Any, Any], version: str) -> dict[str, Any]:
    """`debug V --json`: file, checksums, state, events, log, SQL, backups."""
    ws = _workspace(request)
    _row(ws, _version(version))
    return commands.debug(ws, version)


@get("/api/migrations/{version:str}/log", media_type=MediaType.TEXT, sync_to_thread=True)
def migration_log(request: Request[Any, Any, Any], version: str) -> str:
    """`log V`, as text: what the migration wrote with ctx.log(), run by run."""
    ws = _workspace(request)
    _row(ws, _version(version))
    return "".join(
        f"{line['at']}  {line['run_id']}  {line['level']:<5} {line['message']}\n"
        for line in commands.log(ws, version)
    )


@post("/api/migrations/apply", sync_to_thread=True, status_code=HTTP_202_ACCEPTED)
def apply(
    request: Request[Any, Any, Any], data: ApplyRequest
) -> Response[RunAccepted | DryRunReport]:
    """Apply pending migrations: 202 with a run id; a dry run answers 200 with its report."""
    ws, actor = _workspace(request), _actor(request)
    if commands.wants_dry_run(ws, dry_run=data.dry_run):
        report = commands.dry_run(ws, target=data.target_version, actor=actor)
        return Response(report, status_code=200)
    run_id = request.app.state.runs.start(
        "migrate",
        lambda run_id, on_locked: commands.migrate(
            ws, target=data.target_version, actor=actor, run_id=run_id, on_locked=on_locked
        ),
    )
    return Response(RunAccepted(run_id=run_id), status_code=HTTP_202_ACCEPTED)


@post("/api/migrations/rollback", sync_to_thread=True, status_code=HTTP_202_ACCEPTED)
def rollback(request: Request[Any, Any, Any], data: RollbackRequest) -> RunAccepted:
    """Roll back one migration via its `down`: 202 with a run id."""
    ws, actor = _workspace(request), _actor(request)
    _row(ws, data.version)
    run_id = request.app.state.runs.start(
        "rollback",
        lambda run_id, on_locked: commands.rollback(
            ws, version=data.version, actor=actor, run_id=run_id, on_locked=on_locked
        ),
    )
    return RunAccepted(run_id=run_id)


@post("/api/migrations/confirm", sync_to_thread=True, status_code=200)
def confirm(request: Request[Any, Any, Any]) -> RunReport:
    """`confirm --json`: the runs awaiting confirmation are kept."""
    return commands.confirm(_workspace(request), actor=_actor(request))


@get("/api/runs/{run_id:str}", sync_to_thread=False)
def run(request: Request[Any, Any, Any], run_id: str) -> RunStatus:
    """A run this server started: running, then completed or failed with its report."""
    found = request.app.state.runs.get(run_id)
    if found is None:
        raise NotFoundException(f"unknown run {run_id[:64]!r}")
    return found


@get("/api/events")
async def events(
    request: Request[Any, Any, Any],
    after: Annotated[int, Parameter(ge=0)] = 0,
) -> ServerSentEvent:
    """Every journal event as it is appended (after seq `after` or `Last-Event-ID`)."""
    last_id = request.headers.get("last-event-id", "")
    start = int(last_id) if last_id.isdigit() else after
    return ServerSentEvent(_follow(_workspace(request), start))


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
        before_request=_known_query,
        exception_handlers={
            HTTPException: _http_error,
            errors.FlywallError: _flywall_error,
            JournalError: _flywall_error,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(
            title="flywall-migration",
            version="1",
            render_plugins=[JsonRenderPlugin()],
        ),
        request_max_body_size=MAX_BODY,
        state=_state(workspace, tokens),
        debug=False,
    )


def _state(workspace: Callable[[], Workspace], tokens: Sequence[tuple[str, str]]) -> Any:
    from litestar.datastructures import State

    return State({"workspace": workspace, "tokens": list(tokens), "runs": Runs(workspace)})
