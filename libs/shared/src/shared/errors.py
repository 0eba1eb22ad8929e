"""Every error a client sees is an RFC 9457 problem details document.

Services raise the domain errors below (or let advanced-alchemy's repository errors escape);
the handlers registered by ``shared.app`` turn each into ``application/problem+json`` in this
one place. Nothing about the server's internals (tracebacks, SQL) ever reaches a client.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg.exceptions
import msgspec
import sqlalchemy.exc
import structlog
from advanced_alchemy.exceptions import (
    DuplicateKeyError,
    ForeignKeyError,
    IntegrityError,
    NotFoundError,
    RepositoryError,
)
from litestar import Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
)

from shared.db import is_database_unavailable
from shared.events.connection import is_nats_unavailable

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ExceptionHandlersMap

__all__ = (
    "PROBLEM_JSON",
    "Conflict",
    "DomainError",
    "FieldError",
    "Forbidden",
    "NotFound",
    "Problem",
    "TooManyRequests",
    "Unauthorized",
    "Unprocessable",
    "exception_handlers",
)

PROBLEM_JSON = "application/problem+json"

log = structlog.get_logger("shared.errors")


class FieldError(msgspec.Struct, frozen=True):
    """One invalid input field."""

    field: str
    message: str
    source: str | None = None


class Problem(msgspec.Struct, omit_defaults=True, frozen=True):
    """RFC 9457 problem details."""

    status: int
    title: str
    detail: str | None = None
    type: str = "about:blank"
    instance: str | None = None
    errors: list[FieldError] | None = None
    """Which fields were invalid, for validation problems."""


class DomainError(Exception):
    """A rule of the domain said no. Subclasses choose the HTTP status."""

    status_code: ClassVar[int] = HTTP_400_BAD_REQUEST
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class NotFound(DomainError):
    """The resource does not exist, or the caller may not know that it exists."""

    status_code = HTTP_404_NOT_FOUND
    title = "Not found"


class Conflict(DomainError):
    """The request clashes with the current state (a duplicate, an illegal transition)."""

    status_code = HTTP_409_CONFLICT
    title = "Conflict"


class Unauthorized(DomainError):
    """The caller could not be authenticated."""

    status_code = 401
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(DomainError):
    """The caller is known but may not do this."""

    status_code = HTTP_403_FORBIDDEN
    title = "Forbidden"


class Unprocessable(DomainError):
    """The request is well formed but cannot be applied."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY
    title = "Unprocessable content"


class TooManyRequests(DomainError):
    """The caller has to wait ``retry_after`` seconds."""

    status_code = HTTP_429_TOO_MANY_REQUESTS
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(retry_after, 1))})
        self.retry_after = retry_after


_STATUS_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def _problem_response(
    request: Request[Any, Any, Any], problem: Problem, headers: dict[str, str] | None = None
) -> Response[Problem]:
    return Response(
        content=problem,
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


_NAMED_FIELD = re.compile(r"field `([^`]+)`|at `\$\.([^`]+)`")


def _field_name(key: str, message: str) -> str:
    # msgspec reports a missing or unknown body field against the whole body ("data") and names
    # the field only in its message: the client wants the field.
    if key in ("", "data") and (match := _NAMED_FIELD.search(message)):
        return match.group(1) or match.group(2)
    return key or "body"


def _validation_errors(extra: Any) -> list[FieldError]:
    if not isinstance(extra, list):
        return []
    errors = []
    for item in extra:
        if isinstance(item, dict):
            message = str(item.get("message", "invalid"))
            errors.append(
                FieldError(
                    field=_field_name(str(item.get("key") or ""), message),
                    message=message,
                    source=str(item["source"]) if item.get("source") else None,
                )
            )
    return errors


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    """Litestar's own errors: validation, 401/403/404/405, body too large, and so on."""
    status = exc.status_code
    errors = _validation_errors(exc.extra) if isinstance(exc, ValidationException) else None
    detail: str | None
    if errors:
        detail = "; ".join(f"{error.field}: {error.message}" for error in errors)
    else:
        detail = exc.detail if exc.detail and exc.detail != _STATUS_TITLES.get(status) else None
    if status >= HTTP_500_INTERNAL_SERVER_ERROR:
        detail = None
    problem = Problem(
        status=status,
        title=_STATUS_TITLES.get(status, "Error"),
        detail=detail,
        instance=request.url.path,
        errors=errors or None,
    )
    return _problem_response(request, problem, exc.headers)


def handle_domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[Problem]:
    """A domain rule's refusal, with the status its class names."""
    problem = Problem(status=exc.status_code, title=exc.title, detail=exc.detail, instance=request.url.path)
    return _problem_response(request, problem, exc.headers)


def _is_data_error(exc: BaseException) -> bool:
    # Postgres refused a value (SQLSTATE class 22: a number out of range, NUL in text) or asyncpg
    # could not encode one. advanced-alchemy wraps it in its IntegrityError, and SQLAlchemy's
    # asyncpg dialect in a bare DBAPIError, so look along the chain of causes.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DataError | asyncpg.exceptions.DataError):
            return True
        current = current.__cause__ or current.__context__
    return False


def handle_data_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A value the database cannot store: the input's fault (400), never a conflict (409).

    The input boundary and the schemas' bounds should have refused it already: the warning
    (error type only, never the statement's parameters) says which route lacks a bound.
    """
    log.warning("database refused a value", path=request.url.path, error_type=type(exc).__name__)
    problem = Problem(
        status=HTTP_400_BAD_REQUEST,
        title=_STATUS_TITLES[400],
        detail="A value in the request cannot be stored (out of range or not representable).",
        instance=request.url.path,
    )
    return _problem_response(request, problem)


def handle_repository_error(request: Request[Any, Any, Any], exc: RepositoryError) -> Response[Problem]:
    """advanced-alchemy's errors: a missing row is a 404, a broken constraint a 409."""
    if _is_unavailable(exc):
        return handle_unavailable(request, exc)
    if _is_data_error(exc):
        return handle_data_error(request, exc)
    if isinstance(exc, NotFoundError):
        return handle_domain_error(request, NotFound("No such resource."))
    if isinstance(exc, DuplicateKeyError | IntegrityError | ForeignKeyError):
        return handle_domain_error(request, Conflict("The change conflicts with existing data."))
    return handle_internal_error(request, exc)


UNAVAILABLE_RETRY_AFTER_SECONDS = 5
"""What a 503 asks clients to wait: about the time a restarted Postgres or NATS needs."""


def _is_unavailable(exc: BaseException) -> bool:
    return is_database_unavailable(exc) or is_nats_unavailable(exc)


def handle_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """The database (or NATS) cannot be reached: 503 with ``Retry-After``, never a 500.

    The request was fine and may succeed later; readiness fails meanwhile, so the orchestrator
    sends traffic elsewhere. Logged without a traceback: one line per request is enough.
    """
    log.warning("dependency unavailable", path=request.url.path, error_type=type(exc).__name__)
    problem = Problem(
        status=503,
        title=_STATUS_TITLES[503],
        detail="A service this API depends on is unreachable right now. Try again shortly.",
        instance=request.url.path,
    )
    return _problem_response(request, problem, {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)})


def handle_internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Anything unexpected: logged with its traceback, answered without it."""
    if _is_unavailable(exc):
        return handle_unavailable(request, exc)
    if _is_data_error(exc):
        return handle_data_error(request, exc)
    log.exception("unhandled error", path=request.url.path, error_type=type(exc).__name__)
    problem = Problem(status=HTTP_500_INTERNAL_SERVER_ERROR, title=_STATUS_TITLES[500], instance=request.url.path)
    return _problem_response(request, problem)


def exception_handlers() -> ExceptionHandlersMap:
    """The handlers ``shared.app`` installs on every service."""
    return {
        HTTPException: handle_http_exception,
        DomainError: handle_domain_error,
        RepositoryError: handle_repository_error,
        Exception: handle_internal_error,
    }
