"""Hostile input on every route of every service is a 4xx problem document, never a 5xx or a 409.

The routes come from each service's own OpenAPI document, so a new route is walked without anyone
remembering to add it. For each operation the walk builds a valid request (a body that passes the
schema, real-looking path, query and header values) and then spoils one thing at a time:

- ``nul``: a NUL character (Postgres text cannot hold one) in every string field and parameter;
- ``utf-8``: JSON bodies that are not UTF-8 (invalid bytes, a lone surrogate raw or escaped, an
  overlong NUL) in every string field;
- ``deep``: JSON nested far deeper than any schema needs, on every JSON route;
- ``huge``: integers beyond 64 bits (and beyond every column), one past each documented bound, and
  things that are not integers, in every integer field and parameter (and every one has bounds);
- ``content-type``: a body route called with another media type, or none;
- ``errors``: what Litestar refuses itself: a body over the size limit, malformed or empty JSON,
  a method the path does not have, a path that does not exist (``/docs/...`` included).

Every answer must have the status the class names, be ``application/problem+json`` and carry
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import pytest

if TYPE_CHECKING:
    import httpx
    from litestar import Litestar

    from shared.auth import AccessTokenSigner

NUL = "\x00"
HUGE_INTEGERS = (2**31, 2**63, 10**19, -(2**63) - 1, 2**64, 10**100)
NOT_INTEGERS = ("1.5", "ten", "", "0x10", "1_0")
DEEP_LEVELS = (1_000, 5_000)
BROKEN_UTF8 = {
    "invalid UTF-8": b"a\xffb",
    "encoded lone surrogate": b"a\xed\xa0\x80b",
    "escaped lone surrogate": b"a\\ud800b",
    "overlong NUL": b"a\xc0\x80b",
}
JSON_OTHER_TYPES = (
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/jsonl",
    None,
)
FORM_OTHER_TYPES = ("application/json", "text/plain", "multipart/form-data; boundary=x", None)
CLASSES = ("nul", "utf-8", "deep", "huge", "content-type", "errors")

# Values that pass each service's field rules, so the spoiled field is the only thing wrong.
EXAMPLES: dict[str, Any] = {
    "email": "ada@example.com",
    "username": "ada@example.com",
    "password": "correct horse battery",
    "current_password": "correct horse battery",
    "display_name": "Ada",
    "refresh_token": "r" * 40,
    "sku": "SKU-1",
    "name": "Mug",
    "description": "A mug.",
    "currency": "EUR",
    "grant_type": "password",
    "q": "mug",
    "token": "t" * 40,
    "Idempotency-Key": "key-1",
}


@dataclass
class Case:
    """One request and the status it must get."""

    method: str
    path: str
    what: str
    expected: int
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    content_type: str | None = None


@dataclass
class Operation:
    """One operation of an OpenAPI document, with a valid request for it."""

    method: str
    template: str
    path_params: dict[str, str]
    query: dict[str, Any]
    headers: dict[str, str]
    parameters: list[dict[str, Any]]
    body_media_type: str | None
    body_schema: dict[str, Any] | None
    body: Any

    def path(self, overrides: dict[str, str] | None = None) -> str:
        values = {**self.path_params, **(overrides or {})}
        path = self.template
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        return path

    def case(self, what: str, expected: int, **changes: Any) -> Case:
        content_type = changes.pop("content_type", self.body_media_type)
        content = changes.pop("content", None)
        if content is None and self.body_media_type is not None:
            content = encode_body(self.body_media_type, changes.pop("body", self.body))
        return Case(
            method=self.method,
            path=self.path(changes.pop("path_params", None)),
            what=what,
            expected=expected,
            params=changes.pop("params", self.query),
            headers=changes.pop("headers", self.headers),
            content=content,
            content_type=content_type,
        )


def encode_body(media_type: str, body: Any) -> bytes:
    if media_type == "application/x-www-form-urlencoded":
        return urlencode(body).encode()
    return json.dumps(body).encode()


class Schemas:
    """Resolves ``$ref``s and makes valid example values of an OpenAPI document's schemas."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components: dict[str, Any] = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        for key in ("oneOf", "anyOf"):
            if key in schema:
                options = [self.resolve(option) for option in schema[key]]
                chosen = next(option for option in options if option.get("type") != "null")
                # Litestar puts a union's constraints (maximum, ...) beside the oneOf.
                return {**chosen, **{name: value for name, value in schema.items() if name != key}}
        return schema

    def example(self, schema: dict[str, Any], name: str = "") -> Any:  # noqa: PLR0911 - one return per schema type
        schema = self.resolve(schema)
        if "enum" in schema:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next(k for k in kind if k != "null")
        if kind == "object":
            properties = schema.get("properties", {})
            return {key: self.example(value, key) for key, value in properties.items()}
        if kind == "array":
            return [self.example(schema.get("items", {}), name) for _ in range(max(schema.get("minItems", 1), 1))]
        if kind == "integer":
            return max(int(schema.get("minimum", 1)), 1)
        if kind == "number":
            return 1.5
        if kind == "boolean":
            return True
        if schema.get("format") == "uuid":
            return str(uuid.uuid4())
        if schema.get("format") == "date-time":
            return "2026-01-01T00:00:00Z"
        return EXAMPLES.get(name, "text")

    def leaves(self, schema: dict[str, Any], value: Any, at: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
        """Every (path into the example, schema type) of a string or integer in ``value``."""
        schema = self.resolve(schema)
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            return [leaf for key in value for leaf in self.leaves(properties.get(key, {}), value[key], (*at, key))]
        if isinstance(value, list):
            return [
                leaf for i, item in enumerate(value) for leaf in self.leaves(schema.get("items", {}), item, (*at, i))
            ]
        if isinstance(value, bool):
            return []
        if isinstance(value, int):
            return [(at, "integer")]
        if isinstance(value, str):
            return [(at, "string")]
        return []


def replaced(body: Any, at: tuple[Any, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    target = body
    for key in at[:-1]:
        target = target[key]
    target[at[-1]] = value
    return body


def with_nul(value: object) -> str:
    text = str(value)
    return text[:1] + NUL + text[1:]


def operations(document: dict[str, Any], token: str) -> list[Operation]:
    schemas = Schemas(document)
    found = []
    for template, item in document["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            parameters = [schemas.resolve(p) if "$ref" in p else p for p in operation.get("parameters", [])]
            path_params: dict[str, str] = {}
            query: dict[str, Any] = {}
            headers = {"Authorization": f"Bearer {token}"}
            for parameter in parameters:
                value = schemas.example(parameter.get("schema", {}), parameter["name"])
                if parameter["in"] == "path":
                    path_params[parameter["name"]] = str(value)
                elif parameter["in"] == "query" and parameter.get("required"):
                    query[parameter["name"]] = value
                elif parameter["in"] == "header" and parameter.get("required"):
                    headers[parameter["name"]] = str(value)
            media_type = body_schema = body = None
            if content := operation.get("requestBody", {}).get("content"):
                media_type, spec = next(iter(content.items()))
                body_schema = spec.get("schema", {})
                body = schemas.example(body_schema)
            found.append(
                Operation(
                    method=method.upper(),
                    template=template,
                    path_params=path_params,
                    query=query,
                    headers=headers,
                    parameters=parameters,
                    body_media_type=media_type,
                    body_schema=body_schema,
                    body=body,
                )
            )
    return found


def nul_cases(document: dict[str, Any], operation: Operation) -> list[Case]:
    schemas = Schemas(document)
    cases = []
    for parameter in operation.parameters:
        name, where = parameter["name"], parameter["in"]
        value = with_nul(schemas.example(parameter.get("schema", {}), name))
        if where == "query":
            cases.append(operation.case(f"NUL in query {name}", 400, params={**operation.query, name: value}))
        elif where == "header":
            cases.append(operation.case(f"NUL in header {name}", 400, headers={**operation.headers, name: value}))
        elif where == "path":
            # A path segment with NUL never matches a typed parameter: no route, nothing reaches the database.
            cases.append(operation.case(f"NUL in path {name}", 404, path_params={name: quote(value, safe="")}))
    if operation.body_schema is not None:
        for at, kind in schemas.leaves(operation.body_schema, operation.body):
            if kind == "string":
                body = replaced(operation.body, at, with_nul(_get(operation.body, at)))
                cases.append(operation.case(f"NUL in body {_dotted(at)}", 400, body=body))
    return cases


def utf8_cases(document: dict[str, Any], operation: Operation) -> list[Case]:
    if operation.body_schema is None or operation.body_media_type != "application/json":
        return []
    schemas = Schemas(document)
    cases = []
    if isinstance(operation.body, dict):  # as a key: routes whose fields are not strings get it too
        template = json.dumps({"@@": 1, **operation.body}).encode()
        cases += [
            operation.case(f"{what} in a key", 400, content=template.replace(b"@@", raw))
            for what, raw in BROKEN_UTF8.items()
        ]
    for at, kind in schemas.leaves(operation.body_schema, operation.body):
        if kind == "string":
            template = json.dumps(replaced(operation.body, at, "@@")).encode()
            for what, raw in BROKEN_UTF8.items():
                content = template.replace(b"@@", raw)
                cases.append(operation.case(f"{what} in body {_dotted(at)}", 400, content=content))
    return cases


def _just_outside(schema: dict[str, Any]) -> tuple[int, ...]:
    """The integers one past each documented bound."""
    return tuple(
        value
        for value in (
            schema["maximum"] + 1 if "maximum" in schema else None,
            schema["minimum"] - 1 if "minimum" in schema else None,
        )
        if value is not None
    )


def huge_cases(document: dict[str, Any], operation: Operation) -> list[Case]:
    schemas = Schemas(document)
    cases = []
    for parameter in operation.parameters:
        schema = schemas.resolve(parameter.get("schema", {}))
        if schema.get("type") == "integer" and parameter["in"] == "query":
            name = parameter["name"]
            for number in (*HUGE_INTEGERS, *_just_outside(schema), *NOT_INTEGERS):
                params = {**operation.query, name: str(number)}
                cases.append(operation.case(f"query {name}={number}", 400, params=params))
    if operation.body_schema is not None and operation.body_media_type == "application/json":
        for at, kind in schemas.leaves(operation.body_schema, operation.body):
            if kind == "integer":
                schema = schemas.resolve(_schema_at(schemas, operation.body_schema, at))
                for number in (*HUGE_INTEGERS, *_just_outside(schema), 1.5, "1"):
                    body = replaced(operation.body, at, number)
                    cases.append(operation.case(f"body {_dotted(at)}={number!r}", 400, body=body))
    return cases


def _schema_at(schemas: Schemas, schema: dict[str, Any], at: tuple[Any, ...]) -> dict[str, Any]:
    for key in at:
        schema = schemas.resolve(schema)
        schema = schema.get("items", {}) if isinstance(key, int) else schema.get("properties", {}).get(key, {})
    return schema


def unbounded_integers(document: dict[str, Any], token: str) -> list[str]:
    """Every integer parameter or body field whose document gives no maximum (what overflows a column).

    Minimums are checked where documented (one below is sent), and the huge negative numbers go
    to every integer; Litestar leaves ``minimum: 0`` out of a union's schema, so it is not required.
    """
    schemas = Schemas(document)
    found = []
    for operation in operations(document, token):
        where = f"{operation.method} {operation.template}"
        for parameter in operation.parameters:
            schema = schemas.resolve(parameter.get("schema", {}))
            if schema.get("type") == "integer" and "maximum" not in schema:
                found.append(f"{where} {parameter['in']} {parameter['name']}")
        if operation.body_schema is not None:
            for at, kind in schemas.leaves(operation.body_schema, operation.body):
                schema = schemas.resolve(_schema_at(schemas, operation.body_schema, at))
                if kind == "integer" and "maximum" not in schema:
                    found.append(f"{where} body {_dotted(at)}")
    return found


def deep_cases(operation: Operation, max_body: int) -> list[Case]:
    if operation.body_media_type != "application/json":
        return []
    bodies: list[tuple[str, bytes]] = []
    for levels in DEEP_LEVELS:
        arrays = b"[" * levels + b"]" * levels
        bodies.append((f"{levels} nested arrays", arrays))
        bodies.append((f"{levels} nested objects", b'{"a":' * levels + b"1" + b"}" * levels))
        if isinstance(operation.body, dict) and operation.body:
            first = next(iter(operation.body))
            inside = json.dumps({**operation.body, first: "@"}).encode().replace(b'"@"', arrays)
            bodies.append((f"{levels} nested arrays in {first}", inside))
    # Past the service's body limit the size answers first (413); below it, the depth (400).
    return [operation.case(what, 413 if len(body) > max_body else 400, content=body) for what, body in bodies]


def error_cases(operation: Operation, methods: set[str], max_body: int) -> list[Case]:
    """Litestar's own refusals on this route: too large, malformed, method not allowed."""
    cases = []
    if operation.body_media_type is not None:
        filler = b'{"a": "' + b"x" * max_body + b'"}'
        cases.append(operation.case("body over the size limit", 413, content=filler))
    if operation.body_media_type == "application/json":
        cases.append(operation.case("malformed JSON", 400, content=b'{"a": '))
        cases.append(operation.case("empty JSON body", 400, content=b""))
    for other in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "TRACE", "BREW"} - methods):
        cases.append(Case(method=other, path=operation.path(), what="method not allowed", expected=405))
    return cases


def content_type_cases(operation: Operation) -> list[Case]:
    if operation.body_media_type is None:
        return []
    others = JSON_OTHER_TYPES if operation.body_media_type == "application/json" else FORM_OTHER_TYPES
    return [operation.case(f"body as {other}", 415, content_type=other) for other in others]


def _get(body: Any, at: tuple[Any, ...]) -> Any:
    for key in at:
        body = body[key]
    return body


def _dotted(at: tuple[Any, ...]) -> str:
    return ".".join(str(key) for key in at) or "(body)"


UNKNOWN_PATHS = ("/nowhere", "/docs/nowhere", "/docs/openapi.json/more", "/health/nowhere", "/%00")


def hostile_cases(app: Litestar, token: str, kind: str) -> list[Case]:
    document = app.openapi_schema.to_schema()
    max_body = app.request_max_body_size if isinstance(app.request_max_body_size, int) else 10_000_000
    cases: list[Case] = []
    for operation in operations(document, token):
        if kind == "nul":
            cases += nul_cases(document, operation)
        elif kind == "utf-8":
            cases += utf8_cases(document, operation)
        elif kind == "huge":
            cases += huge_cases(document, operation)
        elif kind == "deep":
            cases += deep_cases(operation, max_body)
        elif kind == "content-type":
            cases += content_type_cases(operation)
        else:
            methods = {method.upper() for method in document["paths"][operation.template]}
            cases += error_cases(operation, methods, max_body)
    if kind == "errors":
        cases += [Case(method="GET", path=path, what="no such path", expected=404) for path in UNKNOWN_PATHS]
    return cases


async def send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    return await client.request(case.method, case.path, params=case.params, headers=headers, content=case.content)


@pytest.mark.parametrize("kind", CLASSES)
async def test_hostile_input_on_every_route_is_a_client_error_problem(
    service_app: Litestar, service_client: httpx.AsyncClient, access_token_signer: AccessTokenSigner, kind: str
) -> None:
    token = access_token_signer.sign(subject=uuid.uuid4(), roles=["admin", "user"])
    cases = hostile_cases(service_app, token, kind)
    wrong = []
    for case in cases:
        response = await send(service_client, case)
        content_type = response.headers.get("content-type", "")
        nosniff = response.headers.get("x-content-type-options")
        if response.status_code != case.expected or content_type != "application/problem+json" or nosniff != "nosniff":
            wrong.append(f"{case.method} {case.path} [{case.what}]: {response.status_code} {content_type} {nosniff}")
    service = service_app.openapi_schema.info.title.rsplit(" ", 1)[-1]
    walked = len(operations(service_app.openapi_schema.to_schema(), token))
    print(f"\n{service} {kind}: {len(cases)} hostile requests, {walked} operations in the document, {len(wrong)} wrong")
    assert cases, f"{service} has no route for {kind}: the walk found nothing to check"
    assert not wrong, "\n".join(wrong)
    if kind == "huge":
        assert not unbounded_integers(service_app.openapi_schema.to_schema(), token)


async def test_every_query_integer_at_its_documented_bounds_is_accepted(
    service_app: Litestar, service_client: httpx.AsyncClient, access_token_signer: AccessTokenSigner
) -> None:
    token = access_token_signer.sign(subject=uuid.uuid4(), roles=["admin", "user"])
    document = service_app.openapi_schema.to_schema()
    schemas = Schemas(document)
    checked, wrong = 0, []
    for operation in operations(document, token):
        if operation.method != "GET":
            continue
        for parameter in operation.parameters:
            schema = schemas.resolve(parameter.get("schema", {}))
            if schema.get("type") != "integer" or parameter["in"] != "query":
                continue
            for bound in ("minimum", "maximum"):
                value = int(schema[bound])
                params = {**operation.query, parameter["name"]: str(value)}
                response = await send(service_client, operation.case(bound, 200, params=params))
                checked += 1
                if response.status_code != 200:
                    wrong.append(f"GET {operation.template} {parameter['name']}={value}: {response.status_code}")
    assert checked, "no integer query parameter to check"
    assert not wrong, "\n".join(wrong)
