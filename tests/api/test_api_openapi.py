"""The OpenAPI document tells the truth: a property-based fuzzer over it against a live server.

For each operation the document lists, hypothesis builds requests from the operation's own
parameters and request schema (valid values, values just outside them, and junk), sends them
to a real `serve` with httpx, and checks each answer: never a 5xx, a status the operation
declares, the declared media type, and a JSON body that matches the declared schema.
Bounded: a fixed number of examples per operation, no example database.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import apiserver
import pytest
from apiserver import FLEET_TOKEN, TOKEN, serving
from conftest import Appliance, create_table_migration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx
    from apiserver import Server

V1, V2, V3 = "202401010001", "202401010002", "202401010003"
EXAMPLES = 20
"""Requests per operation (x 12 operations); each is one round trip to the live server."""
SECONDS = 20
"""At most this long per operation, however loaded the machine."""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    """A server over an appliance with history (applied, logged, pending), and its document."""
    tmp = tmp_path_factory.mktemp("fuzz")
    app = Appliance(tmp / "appliance")
    app.configure()
    create_table_migration(app, V1, "alpha")
    app.write(
        f"{V2}_logs.py",
        '''\
        """Log a line."""
        component = "database"

        def up(ctx, db):
            ctx.log("hello from up")

        def down(ctx, db):
            ctx.log("hello from down")
        ''',
    )
    create_table_migration(app, V3, "gamma")
    app.migrate(V2)
    with serving(app, tmp / "serve.log") as server:
        document = server.client.get("/schema/openapi.json").json()
        yield server, document


def test_the_document_declares_bearer_auth_errors_and_the_event_stream(live):
    _, document = live
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a token of the tokens file (migration-api.tokens)",
    }
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == set(error["required"]) == {"error", "status"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path == "/healthz":
                assert "security" not in operation
                continue
            assert operation["security"] == [{"bearer": []}], (method, path)
            assert {"400", "401"} <= codes, (method, path)
            for code in codes - {"200", "202"}:
                content = operation["responses"][code]["content"]
                assert content == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                }, (method, path, code)
    apply = document["paths"]["/api/migrations/apply"]["post"]["responses"]
    assert {"200", "202", "409", "413", "422"} <= set(apply)
    assert apply["202"]["content"]["application/json"]["schema"]["$ref"].endswith("RunAccepted")
    assert apply["200"]["content"]["application/json"]["schema"]["$ref"].endswith("DryRunReport")
    events = document["paths"]["/api/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    details = document["paths"]["/api/migrations/{version}/details"]["get"]["responses"]
    assert details["200"]["content"]["application/json"]["schema"]["$ref"].endswith("DebugReport")
    history = document["paths"]["/api/migrations/history"]["get"]["responses"]["200"]
    items = history["content"]["application/json"]["schema"]["items"]["oneOf"]
    assert len(items) > 10
    log = document["paths"]["/api/migrations/{version}/log"]["get"]["responses"]["200"]
    assert list(log["content"]) == ["text/plain"]


# -- a small JSON Schema checker (the subset litestar writes) -------------------------------


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    return schema


TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
}


def problems(  # noqa: C901, PLR0911, PLR0912 - one checker for the subset, read top down
    document: dict[str, Any], schema: dict[str, Any], value: Any, at: str = "$"
) -> list[str]:
    """Return why `value` does not match `schema` (empty when it does)."""
    schema = resolve(document, schema)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            found = [problems(document, option, value, at) for option in schema[key]]
            matching = sum(not f for f in found)
            if matching == 0 or (key == "oneOf" and matching > 1):
                return [f"{at}: {matching} of the {key} options match {value!r:.80}"]
    if "const" in schema and value != schema["const"]:
        return [f"{at}: {value!r:.80} is not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r:.80} not in {schema['enum']}"]
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, TYPES[n])
            and not (n in {"integer", "number"} and value is True)
            and not (n in {"integer", "number"} and isinstance(value, bool))
            for n in names
        )
        if not ok:
            return [f"{at}: {value!r:.80} is not {names}"]
    if isinstance(value, dict):
        out = [f"{at}: missing {key}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                out += problems(document, sub, value[key], f"{at}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(schema.get("properties", {})):
                out += problems(document, extra, value[key], f"{at}.{key}")
        return out
    if isinstance(value, list) and "items" in schema:
        return [
            p
            for i, item in enumerate(value)
            for p in problems(document, schema["items"], item, f"{at}[{i}]")
        ]
    return []


def test_the_checker_can_fail(live):
    """A checker that never complains proves nothing."""
    _, document = live
    row = {"$ref": "#/components/schemas/MigrationRow"}
    assert problems(document, row, {"version": 1})
    assert problems(document, {"$ref": "#/components/schemas/ErrorBody"}, {"detail": "x"})
    assert problems(document, {"type": "integer"}, True)


# -- generating requests from the document --------------------------------------------------


def junk() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=30),
        st.text(alphabet="0123456789\u0663\u00b2\uff11", min_size=0, max_size=80),
        st.sampled_from(["true", "false", "1", "-1", str(2**63), "9" * 5000, "..%2F", "%00"]),
    )


def value_for(
    document: dict[str, Any], schema: dict[str, Any], name: str
) -> st.SearchStrategy[Any]:
    """A JSON value for `schema`: usually valid, sometimes just outside it, sometimes junk."""
    schema = resolve(document, schema)
    if "oneOf" in schema or "anyOf" in schema:
        options = schema.get("oneOf") or schema.get("anyOf")
        return st.one_of([value_for(document, o, name) for o in options])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([value_for(document, {**schema, "type": k}, name) for k in kind])
    if "version" in name:
        valid = st.sampled_from([V1, V2, V3, "202499999999"])
    elif kind == "boolean":
        valid = st.booleans()
    elif kind == "integer":
        valid = st.integers(min_value=-2, max_value=2**64)
    elif kind == "string":
        valid = st.text(max_size=70)
    elif kind == "null":
        valid = st.none()
    elif kind == "array":
        valid = st.lists(value_for(document, schema.get("items", {}), name), max_size=3)
    elif kind == "object":
        valid = body_for(document, schema)
    else:
        valid = st.none()
    wrong = st.one_of(st.none(), st.integers(), st.booleans(), st.text(max_size=10), st.just([]))
    return st.one_of(valid, valid, wrong)


def body_for(document: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    fields = {
        key: value_for(document, sub, key)
        if key in required
        else st.one_of(st.nothing(), value_for(document, sub, key))
        for key, sub in properties.items()
    }
    base = st.fixed_dictionaries(
        {k: v for k, v in fields.items() if k in required},
        optional={
            k: value_for(document, properties[k], k) for k in properties if k not in required
        },
    )
    extra = st.dictionaries(st.text(max_size=80), st.integers(), max_size=1)
    return st.one_of(base, st.builds(lambda a, b: {**b, **a}, base, extra))


def query_value(document: dict[str, Any], parameter: dict[str, Any]) -> st.SearchStrategy[str]:
    schema = resolve(document, parameter.get("schema", {}))
    name = parameter["name"]
    valid: list[st.SearchStrategy[str]] = [junk()]
    kinds = {o.get("type") for o in schema.get("oneOf", [schema])}
    if "boolean" in kinds:
        valid.append(st.sampled_from(["true", "false"]))
    if "integer" in kinds:
        valid.append(st.integers(min_value=0, max_value=50).map(str))
    if name == "migration":
        valid.append(st.sampled_from([V1, V2, V3]))
    if name == "kind":
        valid.append(st.sampled_from(["RunStarted", "MigrationLog", "Nope"]))
    return st.one_of(valid)


@st.composite
def request_for(
    draw: st.DrawFn, document: dict[str, Any], path: str, method: str
) -> dict[str, Any]:
    operation = document["paths"][path][method]
    url = path
    query: dict[str, str] = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            value = draw(st.one_of(st.sampled_from([V1, V2, V3, "20240101T000000-abcdef"]), junk()))
            url = url.replace("{" + parameter["name"] + "}", quote(value, safe="") or "x")
        elif parameter["in"] == "query" and draw(st.booleans()):
            query[parameter["name"]] = draw(query_value(document, parameter))
    if draw(st.integers(0, 9)) == 0:
        query[draw(st.text(min_size=1, max_size=70))] = "1"
    content = None
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        content = draw(
            st.one_of(
                body_for(document, resolve(document, schema)).map(lambda b: json.dumps(b).encode()),
                st.binary(max_size=40),
                st.sampled_from([40, 1000, 5000]).map(lambda n: b"[" * n + b"]" * n),
                st.just(b" " * (65 * 1024)),
            )
        )
    token = draw(
        st.sampled_from([TOKEN, TOKEN, TOKEN, FLEET_TOKEN, None, "wrong-token-0123456789abcd"])
    )
    return {"url": url, "query": query, "content": content, "token": token}


OPERATIONS = [
    ("get", "/healthz"),
    ("get", "/api/migration/status"),
    ("get", "/api/migrations"),
    ("get", "/api/migrations/history"),
    ("get", "/api/migrations/{version}"),
    ("get", "/api/migrations/{version}/details"),
    ("get", "/api/migrations/{version}/log"),
    ("post", "/api/migrations/apply"),
    ("post", "/api/migrations/rollback"),
    ("post", "/api/migrations/confirm"),
    ("get", "/api/runs/{run_id}"),
    ("get", "/api/events"),
]


def test_the_fuzzer_covers_every_documented_operation(live):
    _, document = live
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented == set(OPERATIONS)


def check_answer(
    document: dict[str, Any], path: str, method: str, response: httpx.Response
) -> None:
    operation = document["paths"][path][method]
    status = str(response.status_code)
    response.read()
    assert response.status_code < 500, response.text
    assert status in operation["responses"], (status, response.text[:200])
    content = operation["responses"][status].get("content", {})
    media = response.headers.get("content-type", "").partition(";")[0]
    assert media in content, (status, media, list(content))
    if media == "application/json":
        found = problems(document, content[media]["schema"], json.loads(response.read()))
        assert not found, found[:5]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_answer_is_declared_and_matches_its_schema(live, method, path):
    server, document = live
    deadline = time.monotonic() + SECONDS

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )
    @given(request=request_for(document, path, method))
    def one(request: dict[str, Any]) -> None:
        if time.monotonic() > deadline:
            return
        headers = {"Authorization": f"Bearer {request['token']}"} if request["token"] else {}
        if request["content"] is not None:
            headers["Content-Type"] = "application/json"
        with (
            apiserver.client(base_url=server.url, timeout=30) as client,
            client.stream(
                method.upper(),
                request["url"],
                params=request["query"],
                content=request["content"],
                headers=headers,
            ) as response,
        ):
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                assert response.status_code == 200
                assert "200" in document["paths"][path][method]["responses"]
                return
            check_answer(document, path, method, response)

    one()
    assert "Traceback" not in server.log.read_text()
