"""The OpenAPI document of every service, and the Swagger UI page that shows it, served offline.

The document tells the truth about errors from one place, :func:`document_operations`, which
derives each operation's error answers from what the route is made of instead of hand-written
lists per route:

- every operation may answer 401: a request whose ``Authorization`` header holds no valid access
  token is refused before routing, whatever the route;
- a route guarded by :func:`shared.auth.signed_in` or :func:`shared.auth.admin_only` (or taking
  the signed-in ``user``) declares the security schemes; ``admin_only`` adds 403;
- a route with path parameters answers 404 (an unknown or malformed id), and 400;
- a route with query or header parameters, or a body, answers 400 (fields named in ``errors[]``);
- a route with a body also answers 413 (too large) and 415 (not the media type it reads);
- a handler names the domain errors it may raise: ``@post(..., domain_errors=(Conflict,))``.

Every error is documented as ``application/problem+json`` with the :class:`shared.errors.Problem`
schema. msgspec Structs that refuse unknown fields say ``additionalProperties: false``, and every
operation must have an explicit ``operation_id`` (the app refuses to start without one).
"""

from __future__ import annotations

import inspect
import types
import typing
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

# Litestar's own schema plugin for msgspec Structs; subclassed to add additionalProperties.
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.exceptions import ImproperlyConfiguredException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityScheme, Server
from litestar.plugins.core._msgspec import kwarg_definition_from_field
from litestar.response import ServerSentEvent
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.types import Empty
from litestar.typing import FieldDefinition

from shared.auth import admin_only, signed_in
from shared.errors import PROBLEM_JSON, DomainError, Problem

if TYPE_CHECKING:
    from litestar import Litestar, Router
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.handlers import HTTPRouteHandler
    from litestar.openapi.spec import Reference, Schema

__all__ = (
    "DOCS_PATH",
    "allow_every_method",
    "OfflineSwaggerUI",
    "StrictStructSchemaPlugin",
    "document_operations",
    "openapi_config",
    "swagger_ui_assets",
)

_UNIONS = (typing.Union, types.UnionType)

DOCS_PATH = "/docs"
ASSETS_PATH = "/assets"


_SIGN_IN_GUARDS = (signed_in, admin_only)
# Parameters Litestar fills from the connection itself: not client input.
_RESERVED_PARAMETERS = frozenset({"self", "request", "socket", "state", "scope", "headers", "cookies", "query", "body"})

_DESCRIPTIONS = {
    400: "Invalid input: the fields are named in `errors[]`",
    401: "No valid access token (a missing, malformed, forged or expired `Authorization: Bearer` token)",
    403: "Signed in, but not allowed to do this",
    404: "No such resource (or not yours to see)",
    409: "Conflicts with the current state",
    413: "The request body is too large",
    415: "The request body is not of a media type this operation reads",
    422: "Well formed, but cannot be applied",
    429: "Too many attempts: wait for `Retry-After` seconds",
}


def swagger_ui_assets() -> Path:
    """The folder of Swagger UI's JavaScript and CSS, from the ``swagger-ui-bundle-v2`` package."""
    root = Path(str(files("swagger_ui_bundle"))) / "vendor"
    return next(root.glob("swagger-ui-*"))


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """msgspec Structs documented as they are decoded.

    - Structs declared ``forbid_unknown_fields=True`` say ``additionalProperties: false``:
      clients (and schemathesis) then know that an extra field is refused with 400.
    - A field ``X | UnsetType`` (left out of a partial update) is documented as ``X`` with all
      its constraints: ``UNSET`` is never a value on the wire, and Litestar's union path loses
      some of ``X``'s bounds (``minimum: 0``), so the document accepted values the API refuses.
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        """The struct's schema, closed when the struct refuses unknown fields."""
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if not isinstance(info, msgspec.inspect.StructType):
            return schema
        if info.forbid_unknown_fields:
            schema.additional_properties = False
        hints = field_definition.get_type_hints(include_extras=True, resolve_generics=True)
        for field in info.fields:
            members = typing.get_args(hints[field.name]) if typing.get_origin(hints[field.name]) in _UNIONS else ()
            kept = [member for member in members if member is not msgspec.UnsetType]
            if len(kept) == 1 and len(members) == 2 and schema.properties is not None:  # noqa: PLR2004 - X | UNSET
                kwarg_definition = kwarg_definition_from_field(field)[0]
                single = FieldDefinition.from_annotation(
                    kept[0],
                    name=field.encode_name,
                    **({"kwarg_definition": kwarg_definition} if kwarg_definition else {}),
                )
                schema.properties[field.encode_name] = schema_creator.for_field_definition(single)
        return schema


class OfflineSwaggerUI(SwaggerRenderPlugin):
    """Swagger UI with its JavaScript, CSS and icon served by the service itself: no CDN."""

    def __init__(self, *, path: str = "/", root_path: str = "") -> None:
        # Behind a proxy that strips ``root_path``, the browser asks for every URL with it (the
        # document itself is inlined in the page; "Try it out" follows its ``servers``).
        assets = f"{root_path}{DOCS_PATH}{ASSETS_PATH}"
        super().__init__(
            js_url=f"{assets}/swagger-ui-bundle.js",
            css_url=f"{assets}/swagger-ui.css",
            standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
            # The page keeps the token across reloads; the sign-in form has no client secret.
            init_oauth={"usePkceWithAuthorizationCodeGrant": False},
            path=path,
            favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
        )

    def receive_router(self, router: Router) -> None:
        """Serve the assets under ``/docs/assets`` beside the page (and Swagger's OAuth2 redirect page)."""
        super().receive_router(router)
        router.register(
            create_static_files_router(ASSETS_PATH, directories=[swagger_ui_assets()], name="swagger-ui-assets")
        )


def openapi_config(
    *, title: str, version: str, description: str | None, token_url: str, root_path: str = ""
) -> OpenAPIConfig:
    """The OpenAPI configuration every service uses: the page at ``/docs``, the JSON at ``/docs/openapi.json``.

    Args:
        title: The document's title.
        version: The API's version.
        description: A paragraph about the service.
        token_url: Where users' ``POST /auth/token`` answers (the OAuth2 password flow Swagger UI
            signs in with); empty leaves only the bearer scheme.
        root_path: The path prefix a proxy strips before forwarding (``/users``): the document's
            ``servers`` and the page's links start with it; empty: served at the root.
    """
    schemes: dict[str, SecurityScheme | Reference] = {
        "BearerToken": SecurityScheme(
            type="http", scheme="bearer", bearer_format="JWT", description="An access token from users."
        ),
    }
    if token_url:
        schemes["OAuth2"] = SecurityScheme(
            type="oauth2",
            description="Sign in with your email (as username) and password at users' /auth/token.",
            flows=OAuthFlows(password=OAuthFlow(token_url=token_url, scopes={})),
        )
    return OpenAPIConfig(
        title=title,
        version=version,
        description=description,
        path=DOCS_PATH,
        render_plugins=[OfflineSwaggerUI(path="/", root_path=root_path), JsonRenderPlugin(path="/openapi.json")],
        servers=[Server(url=root_path or "/")],
        components=Components(security_schemes=schemes),
        use_handler_docstrings=True,
    )


def _problem(status: int, description: str | None = None) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=description or _DESCRIPTIONS.get(status, "An error"),
        media_type=PROBLEM_JSON,
    )


def _takes_input(route: HTTPRoute, handler: HTTPRouteHandler) -> tuple[bool, bool]:
    """Whether the handler reads a body, and whether it reads query or header parameters."""
    parameters = set(handler.parsed_fn_signature.parameters)
    has_body = "data" in parameters
    others = parameters - _RESERVED_PARAMETERS - {"data"} - set(handler.resolve_dependencies())
    others -= set(route.path_parameters)
    return has_body, bool(others)


def _operation_statuses(route: HTTPRoute, handler: HTTPRouteHandler) -> tuple[dict[int, str | None], bool]:
    # The guards as written on every layer (resolve_guards() wraps them).
    guards = [guard for layer in handler.ownership_layers for guard in (getattr(layer, "guards", None) or ())]
    needs_sign_in = (
        any(guard in _SIGN_IN_GUARDS for guard in guards) or "user" in handler.parsed_fn_signature.parameters
    )
    statuses: dict[int, str | None] = {401: None}
    if admin_only in guards:
        statuses[403] = "Signed in, but not an administrator"
    has_body, has_parameters = _takes_input(route, handler)
    if route.path_parameters:
        # A malformed id never reaches the handler: the router answers 404. Litestar documents a
        # 400 for every handler with parameters anyway; it is replaced by ours, in the right shape.
        statuses[404] = None
    if has_body or has_parameters or route.path_parameters:
        statuses[400] = None
    if has_body:
        statuses[413] = None
        statuses[415] = None
    for error in handler.opt.get("domain_errors", ()):
        if not (inspect.isclass(error) and issubclass(error, DomainError)):
            raise ImproperlyConfiguredException(f"{handler}: domain_errors holds {error!r}, not a DomainError")
        first_line = (error.__doc__ or "").strip().splitlines()
        statuses[error.status_code] = statuses.get(error.status_code) or (first_line[0] if first_line else None)
    return statuses, needs_sign_in


def document_operations(app: Litestar) -> None:
    """Give every operation in the app's OpenAPI document its error answers and security.

    Call it once on a built app, before the document is first served (Litestar builds it lazily).
    A signed-in operation accepts any of the document's security schemes (Swagger UI's password
    sign-in, or a pasted bearer token).

    Raises:
        ImproperlyConfiguredException: An operation has no explicit ``operation_id``, or names
            something that is not a :class:`shared.errors.DomainError` in ``domain_errors``.
    """
    if app.openapi_config is None:
        return
    components = app.openapi_config.components
    schemes: dict[str, Any] = {}
    for part in components if isinstance(components, list) else [components]:
        schemes |= part.security_schemes or {}
    signed_in_security: list[dict[str, list[str]]] = [{name: []} for name in sorted(schemes)]
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            if not isinstance(handler.operation_id, str) or not handler.operation_id:
                raise ImproperlyConfiguredException(f"{route.path} {sorted(handler.http_methods)}: no operation_id")
            statuses, needs_sign_in = _operation_statuses(route, handler)
            responses: dict[int, ResponseSpec] = {
                status: _problem(status, description) for status, description in sorted(statuses.items())
            }
            if _returns_event_stream(handler):
                responses[handler.status_code] = ResponseSpec(
                    data_container=str,
                    media_type="text/event-stream",
                    description="Server-Sent Events, one per notification, until the client disconnects",
                )
            # What a handler documents itself (a success answer of another shape) wins.
            handler.responses = responses | dict(handler.responses or {})
            if needs_sign_in:
                handler.security = signed_in_security
                # Litestar caches the resolved security on first use: recompute it with ours.
                handler._resolved_security = Empty


def allow_every_method(app: Litestar) -> None:
    """Make ``OPTIONS`` (and its ``Allow`` header) list every method of its path.

    Litestar builds a path's ``OPTIONS`` handler with the first route of that path and keeps it
    when later handlers of the same path are merged into a new route: its ``Allow`` then names
    only the first handler's methods (``OPTIONS, POST`` on a path that also has ``GET``). Point
    each such handler at its path's current methods.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.http_methods != {"OPTIONS"} or handler.fn.__name__ != "options_handler":
                continue
            for cell in getattr(handler.fn, "__closure__", None) or ():
                if isinstance(cell.cell_contents, HTTPRoute) and cell.cell_contents is not route:
                    cell.cell_contents.methods = route.methods


def _returns_event_stream(handler: HTTPRouteHandler) -> bool:
    annotation: Any = handler.parsed_fn_signature.return_type.annotation
    return inspect.isclass(annotation) and issubclass(annotation, ServerSentEvent)
