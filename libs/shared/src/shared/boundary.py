r"""The HTTP input boundary: hostile input is refused before it reaches a decoder or the database.

One middleware that every service gets from ``shared.app.create_service_app``, checking what no
field rule can, before anything is decoded:

- **Media type.** A JSON body route accepts ``application/json`` and ``application/*+json``
  (UTF-8 only: RFC 8259), a form route only its form type. Anything else, or a body without a
  ``Content-Type``, is a 415.
- **NUL characters.** Postgres text cannot hold U+0000: asyncpg fails on insert and on a ``LIKE``
  parameter. A NUL in the query string, the path, a header value, a form body or anywhere in a
  JSON body (raw or as a ``\\u0000`` escape) is a 400.
- **Encoding.** A JSON body is UTF-8 (RFC 8259): invalid UTF-8, an encoded lone surrogate
  included, is a 400 (msgspec answers the first with a 500 and passes the second on to Postgres).
- **Nesting depth.** msgspec raises ``RecursionError`` near 1,000 levels; no schema needs more
  than a handful. A JSON body nested deeper than ``max_json_depth`` is a 400, found by one scan
  of the bytes, before decoding.

The body is read once, through Litestar's own ``Request.body()`` (so its size limit answers 413),
and cached where the handler's request finds it: nothing is read or decoded twice. Each check
starts with a C-speed ``in``/``count`` over the bytes and only walks the body when that fast
test cannot rule the problem out.

The same module adds the response headers every API answer carries (``security_headers``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from litestar import Request
from litestar._openapi.plugin import handle_schema_path_not_found
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.enums import RequestEncodingType, ScopeType
from litestar.exceptions import ClientException, NotFoundException, ValidationException
from litestar.middleware import ASGIMiddleware
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar.handlers import BaseRouteHandler
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = (
    "NO_STORE",
    "PRAGMA_NO_CACHE",
    "SECURITY_HEADERS",
    "BoundaryConfig",
    "InputBoundaryMiddleware",
    "UnsupportedMediaType",
    "json_body_problem",
    "security_headers",
)

_NUL: Final = b"\x00"
_NUL_ESCAPE: Final = b"\\u0000"
_NUL_PERCENT: Final = b"%00"
_BACKSLASH: Final = 0x5C
# One JSON string, escapes included (the unrolled loop keeps the match linear).
_JSON_STRINGS: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")
_BRACKETS_AS_SQUARE: Final = bytes.maketrans(b"{}", b"[]")
_UTF8_CHARSETS: Final = frozenset((b"utf-8", b"utf8"))
_UNKNOWN_DOCS_PATH: Final = "unknown docs path"
_SCHEMA_NOT_FOUND_PAGE: Final[object] = handle_schema_path_not_found


class UnsupportedMediaType(ClientException):
    """The body's media type is not the one the route reads."""

    status_code = HTTP_415_UNSUPPORTED_MEDIA_TYPE


@dataclass(frozen=True)
class BoundaryConfig:
    """Limits of the input boundary."""

    max_json_depth: int = 32
    """Deepest nesting of arrays and objects a JSON body may have (the schemas need 3)."""


def _has_nul_escape(body: bytes) -> bool:
    # ``\u0000`` is an escape only when the backslash itself is not escaped: count the run of
    # backslashes before it (``\\u0000`` is the text "\u0000", not NUL).
    start = body.find(_NUL_ESCAPE)
    while start != -1:
        run = 0
        while start - run - 1 >= 0 and body[start - run - 1] == _BACKSLASH:
            run += 1
        if run % 2 == 0:
            return True
        start = body.find(_NUL_ESCAPE, start + 1)
    return False


def _deeper_than(body: bytes, limit: int) -> bool:
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # not enough brackets in the whole body, inside strings or not
    # Keep only the structure, every step at C speed: strings out (without an escaped quote, every
    # second piece between quotes is a string; with one, match strings whole), then everything but
    # brackets, with ``{}`` written as ``[]`` (depth is all that matters; a mismatch is the decoder's).
    outside = b"".join(body.split(b'"')[::2]) if b'\\"' not in body else _JSON_STRINGS.sub(b"", body)
    structure = outside.translate(_BRACKETS_AS_SQUARE, _NOT_BRACKETS)
    too_deep = b"[" * (limit + 1)
    # Each pass removes the innermost pairs: one level of nesting. A body at most ``limit`` deep is
    # gone after ``limit`` passes; a run of more than ``limit`` openers settles it at once.
    passes = 0
    while structure and passes < limit:
        if too_deep in structure:
            return True
        shallower = structure.replace(b"[]", b"")
        if len(shallower) == len(structure):
            # Unbalanced (invalid JSON): each bracket left could still open one more level.
            return passes + len(structure) > limit
        structure = shallower
        passes += 1
    return bool(structure)


def json_body_problem(body: bytes, *, max_depth: int) -> str | None:
    """Why a JSON body must be refused before decoding, or None.

    Args:
        body: The raw request body.
        max_depth: The deepest nesting of arrays and objects allowed.

    Returns:
        A sentence for the client, or None when the body may be decoded.
    """
    if _NUL in body or (_NUL_ESCAPE in body and _has_nul_escape(body)):
        return "The body contains a NUL character (\\u0000), which cannot be stored."
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError:
            # msgspec raises UnicodeDecodeError (a 500) on invalid UTF-8 and lets an encoded lone
            # surrogate through, which Postgres then cannot store; JSON is UTF-8 (RFC 8259).
            return "The body is not valid UTF-8."
    if _deeper_than(body, max_depth):
        return f"The body is nested deeper than {max_depth} levels."
    return None


def _is_json(content_type: bytes) -> bool:
    media_type, _, parameters = content_type.partition(b";")
    media_type = media_type.strip().lower()
    if media_type != b"application/json" and not (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    ):
        return False
    return _utf8_or_unspecified(parameters)


def _is_form(content_type: bytes) -> bool:
    media_type, _, parameters = content_type.partition(b";")
    return media_type.strip().lower() == b"application/x-www-form-urlencoded" and _utf8_or_unspecified(parameters)


def _is_multipart(content_type: bytes) -> bool:
    return content_type.partition(b";")[0].strip().lower() == b"multipart/form-data"


def _utf8_or_unspecified(parameters: bytes) -> bool:
    for parameter in parameters.split(b";"):
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"charset" and value.strip().strip(b'"').lower() not in _UTF8_CHARSETS:
            return False
    return True


_MEDIA_TYPE_CHECKS: Final[dict[str, Callable[[bytes], bool]]] = {
    RequestEncodingType.JSON.value: _is_json,
    RequestEncodingType.URL_ENCODED.value: _is_form,
    RequestEncodingType.MULTI_PART.value: _is_multipart,
}


def _nul_in_query(query_string: bytes) -> ValidationException:
    names = sorted(
        {
            name
            for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
            if "\x00" in name or "\x00" in value
        }
    )
    return ValidationException(
        detail="A query parameter contains a NUL character.",
        extra=[
            {"key": name.replace("\x00", "\\u0000"), "source": "query", "message": "contains a NUL character"}
            for name in names or ["query"]
        ],
    )


class InputBoundaryMiddleware(ASGIMiddleware):
    """Refuses wrong media types, NUL characters and deep JSON before any decoding (see the module)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, config: BoundaryConfig | None = None) -> None:
        self.config = config or BoundaryConfig()
        # Keyed by id(); the handler is kept in the value so that its id is never reused.
        self._routes: dict[int, tuple[BaseRouteHandler, str | None]] = {}

    def _body_type(self, handler: BaseRouteHandler) -> str | None:
        # Worked out once per handler: which media type its ``data`` is read as (None: no body,
        # _UNKNOWN_DOCS_PATH: Litestar's HTML 404 page for unknown paths under the docs).
        known = self._routes.get(id(handler))
        if known is None:
            field = handler.parsed_data_field
            media_type: str | None = None
            if handler.fn is _SCHEMA_NOT_FOUND_PAGE:
                media_type = _UNKNOWN_DOCS_PATH
            elif field is not None:
                declared = getattr(field.kwarg_definition, "media_type", None) or RequestEncodingType.JSON
                media_type = declared.value if isinstance(declared, RequestEncodingType) else str(declared)
            known = self._routes[id(handler)] = (handler, media_type)
        return known[1]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Check the query string, path, headers and (on body routes) the body, then go on."""
        query_string = scope.get("query_string", b"")
        if query_string and (_NUL_PERCENT in query_string or _NUL in query_string):
            raise _nul_in_query(query_string)
        if "\x00" in scope["path"]:
            raise ValidationException(
                detail="The path contains a NUL character.",
                extra=[{"key": "path", "source": "path", "message": "contains a NUL character"}],
            )
        content_type: bytes | None = None
        for name, value in scope["headers"]:
            if _NUL in value:
                header = name.decode("latin-1")
                raise ValidationException(
                    detail=f"The {header} header contains a NUL character.",
                    extra=[{"key": header, "source": "header", "message": "contains a NUL character"}],
                )
            if name == b"content-type":
                content_type = value
        body_type = self._body_type(scope["route_handler"])
        if body_type is _UNKNOWN_DOCS_PATH:
            # Litestar answers these with an HTML page; every error here is a problem document.
            raise NotFoundException
        if body_type is not None:
            await self._check_body(scope, receive, body_type, content_type)
        await next_app(scope, receive, send)

    async def _check_body(self, scope: Scope, receive: Receive, body_type: str, content_type: bytes | None) -> None:
        if content_type is not None:
            accepted = _MEDIA_TYPE_CHECKS.get(body_type)
            if accepted is not None and not accepted(content_type):
                raise UnsupportedMediaType(detail=f"This route reads {body_type} bodies.")
        # Read once, through Litestar (its size limit applies), into the connection's cache where
        # the handler's Request finds it.
        body = await Request[Any, Any, Any](scope, receive).body()
        if not body:
            return
        if content_type is None:
            raise UnsupportedMediaType(detail=f"A body needs a Content-Type; this route reads {body_type}.")
        problem: str | None = None
        if body_type == RequestEncodingType.JSON:
            problem = json_body_problem(body, max_depth=self.config.max_json_depth)
        elif body_type == RequestEncodingType.URL_ENCODED and (_NUL_PERCENT in body or _NUL in body):
            problem = "The form contains a NUL character, which cannot be stored."
        if problem is not None:
            raise ClientException(detail=problem)


NO_STORE: Final = CacheControlHeader(no_store=True)
"""For answers that carry credentials (tokens): no cache may keep them (RFC 6749 §5.1)."""
PRAGMA_NO_CACHE: Final = ResponseHeader(name="Pragma", value="no-cache")
"""The HTTP/1.0 twin of ``NO_STORE`` that RFC 6749 §5.1 also asks token responses for."""

SECURITY_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
"""Sent with every answer. HSTS is left to the TLS edge, which knows whether HTTPS is in use."""

_API_CSP: Final = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
"""JSON needs no sources at all; HTML (the Swagger page under /docs) sets its own policy."""


async def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: add ``SECURITY_HEADERS`` (and the API's CSP) to every HTTP answer.

    It runs for every response the app sends, routed or not (404, 405, errors), which a route
    middleware would miss. A response that sets one of these headers itself keeps its own value;
    HTML responses get no CSP from here.
    """
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers") or ())
    present = set()
    html = False
    for name, value in headers:
        lowered = name.lower()
        present.add(lowered)
        if lowered == b"content-type" and value.startswith(b"text/html"):
            html = True
    headers.extend(header for header in SECURITY_HEADERS if header[0] not in present)
    if not html and _API_CSP[0] not in present:
        headers.append(_API_CSP)
    message["headers"] = headers
