"""The input boundary on its own: a small app with the same middleware, handlers and hooks as the services."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import httpx
import msgspec
import pytest
from litestar import Litestar, get, post
from litestar.params import HeaderParameter, JSONBody, QueryParameter, URLEncodedBody
from litestar.response import Response

from shared.boundary import BoundaryConfig, InputBoundaryMiddleware, json_body_problem, security_headers
from shared.errors import exception_handlers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

MAX_DEPTH = BoundaryConfig().max_json_depth


class Note(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    tags: list[str] = []
    extra: dict[str, object] = {}


class Form(msgspec.Struct):
    username: str
    password: str


@post("/notes", sync_to_thread=False)
def add_note(data: JSONBody[Note]) -> Note:
    return data


@post("/form", sync_to_thread=False)
def form(data: URLEncodedBody[Form]) -> dict[str, str]:
    return {"username": data.username}


@get("/search", sync_to_thread=False)
def search(q: Annotated[str, QueryParameter()] = "", key: Annotated[str, HeaderParameter(name="X-Key")] = "") -> str:
    return q + key


@get("/page", sync_to_thread=False, media_type="text/html")
def page() -> Response[str]:
    return Response("<p>hi</p>", media_type="text/html")


def boundary_app() -> Litestar:
    return Litestar(
        route_handlers=[add_note, form, search, page],
        middleware=[InputBoundaryMiddleware()],
        exception_handlers=exception_handlers(),
        before_send=[security_headers],
        request_max_body_size=64_000,
        openapi_config=None,
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=boundary_app())  # type: ignore[arg-type]  # Litestar's precise ASGI types
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def nested(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


# --- the scan of raw bytes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"text": "a\\u0000b"}', id="escape"),
        pytest.param(b'{"text": "a\x00b"}', id="raw"),
        pytest.param(b'{"a\\u0000": 1}', id="in-a-key"),
        pytest.param(b'{"text": "\\\\\\u0000"}', id="after-an-escaped-backslash"),
        pytest.param(b'{"text": "x", "tags": ["ok", "\\u0000"]}', id="deep-in-a-list"),
    ],
)
def test_nul_anywhere_in_json_is_found(body: bytes) -> None:
    assert json_body_problem(body, max_depth=MAX_DEPTH) is not None
    if b"\x00" not in body:  # a raw NUL is not even valid JSON; an escape decodes to one
        assert "\\x00" in repr(json.loads(body))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"text": "\\\\u0000"}', id="escaped-backslash-then-u0000"),
        pytest.param(b'{"text": "\\\\\\\\u0000"}', id="two-escaped-backslashes-then-u0000"),
        pytest.param(b'{"text": "\\u0001 \\u00a0 u0000"}', id="other-escapes"),
    ],
)
def test_escaped_backslash_before_u0000_is_text_not_nul(body: bytes) -> None:
    assert "\x00" not in msgspec.json.decode(body)["text"]  # what a decoder makes of it: no NUL
    assert json_body_problem(body, max_depth=MAX_DEPTH) is None


@pytest.mark.parametrize(
    "raw", [b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xe2\x82"], ids=["ff", "surrogate", "overlong-nul", "truncated"]
)
def test_json_that_is_not_utf8_is_refused(raw: bytes) -> None:
    assert json_body_problem(b'{"text": "a' + raw + b'b"}', max_depth=MAX_DEPTH) == "The body is not valid UTF-8."


def test_non_ascii_utf8_is_accepted() -> None:
    body = json.dumps({"text": "Ada Lovelace \u2014 \u00e9 \u65e5\u672c \U0001f600"}, ensure_ascii=False).encode()
    assert not body.isascii()
    assert json_body_problem(body, max_depth=MAX_DEPTH) is None


def test_depth_counts_only_structure_outside_strings() -> None:
    brackets_in_a_string = json.dumps({"text": "[" * 500 + "{" * 500}).encode()
    many_shallow = json.dumps([{"a": [1]} for _ in range(1000)]).encode()
    assert json_body_problem(brackets_in_a_string, max_depth=MAX_DEPTH) is None
    assert json_body_problem(many_shallow, max_depth=MAX_DEPTH) is None
    assert json_body_problem(nested(MAX_DEPTH), max_depth=MAX_DEPTH) is None
    assert json_body_problem(nested(MAX_DEPTH + 1), max_depth=MAX_DEPTH) is not None
    quoted_bracket_then_deep = b'["\\"[", ' + nested(MAX_DEPTH) + b"]"
    assert json_body_problem(quoted_bracket_then_deep, max_depth=MAX_DEPTH) is not None


# --- the middleware in an app ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; Charset=UTF-8",
        'application/json;charset="utf-8"',
        "application/merge-patch+json",
        "application/problem+json",
    ],
)
async def test_json_media_types_are_accepted(client: httpx.AsyncClient, content_type: str) -> None:
    body = json.dumps({"text": "hello", "tags": ["\\u0000 as text"]}).encode()
    response = await client.post("/notes", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    assert response.json() == {"text": "hello", "tags": ["\\u0000 as text"], "extra": {}}


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonx",
        "text/json+xml",
        None,
    ],
)
async def test_json_route_refuses_other_media_types_with_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await client.post("/notes", content=b'{"text": "hello"}', headers=headers)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 415


async def test_form_route_takes_only_its_form_type(client: httpx.AsyncClient) -> None:
    ok = await client.post("/form", data={"username": "ada", "password": "pw"})
    as_json = await client.post("/form", json={"username": "ada", "password": "pw"})
    untyped = await client.post("/form", content=b"username=ada&password=pw")
    assert ok.status_code == 201, ok.text
    assert (as_json.status_code, untyped.status_code) == (415, 415)


async def test_nul_in_json_body_query_header_form_is_400_naming_where(client: httpx.AsyncClient) -> None:
    body = await client.post("/notes", content=b'{"text": "a\\u0000b"}', headers={"Content-Type": "application/json"})
    query = await client.get("/search", params={"q": "a\x00b"})
    header = await client.get("/search", headers={"X-Key": "a\x00b"})
    form = await client.post("/form", data={"username": "a\x00b", "password": "pw"})
    for response in (body, query, header, form):
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert query.json()["errors"] == [{"field": "q", "message": "contains a NUL character", "source": "query"}]
    assert header.json()["errors"][0]["field"] == "x-key"


async def test_deep_json_is_400_before_decoding_and_limit_depth_still_works(client: httpx.AsyncClient) -> None:
    deep = b'{"text": "x", "extra": {"a": ' + nested(MAX_DEPTH * 100) + b"}}"
    at_limit = b'{"text": "x", "extra": {"a": ' + nested(MAX_DEPTH - 2) + b"}}"
    refused = await client.post("/notes", content=deep, headers={"Content-Type": "application/json"})
    accepted = await client.post("/notes", content=at_limit, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400, refused.text
    assert "nested deeper" in refused.json()["detail"]
    assert accepted.status_code == 201, accepted.text


async def test_body_over_the_limit_is_413_and_empty_body_reaches_the_decoder(client: httpx.AsyncClient) -> None:
    large = b'{"text": "' + b"x" * 70_000 + b'"}'
    too_large = await client.post("/notes", content=large, headers={"Content-Type": "application/json"})
    empty = await client.post("/notes", content=b"", headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413
    assert empty.status_code == 400
    assert too_large.headers["content-type"] == empty.headers["content-type"] == "application/problem+json"


async def test_every_answer_carries_the_security_headers(client: httpx.AsyncClient) -> None:
    answers = [
        await client.get("/search", params={"q": "x"}),
        await client.get("/nowhere"),
        await client.put("/notes"),
        await client.post("/notes", content=b"{", headers={"Content-Type": "application/json"}),
        await client.get("/page"),
    ]
    assert [answer.status_code for answer in answers] == [200, 404, 405, 400, 200]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cross-origin-resource-policy"] == "same-origin"
    for answer in answers[:-1]:
        assert answer.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert "content-security-policy" not in answers[-1].headers  # HTML sets its own policy
