"""The one factory every service builds its Litestar app with."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.types import Message, Scope
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared.auth import AuthenticationMiddleware, TokenVerifier, load_public_keys, provide_current_user
from shared.boundary import InputBoundaryMiddleware, security_headers
from shared.client_address import ClientAddressResolver
from shared.db import ReadPool, RequestSessions, ServiceDatabase, service_engine
from shared.errors import exception_handlers
from shared.events.connection import connect_nats
from shared.events.permissions import inbox_prefix
from shared.health import ReadinessCheck, create_health_controller
from shared.internal_port import Answer, metrics_answer, start_internal_server
from shared.litestar_overrides import apply_litestar_overrides
from shared.openapi import StrictStructSchemaPlugin, allow_every_method, document_operations, openapi_config
from shared.pagination import provide_page_request
from shared.request_telemetry import RequestTelemetry, access_log
from shared.settings import SettingsError, variable_name
from shared.strict_json import refuse_loose_json
from shared.telemetry import JsonInfoLines, configure_logging, configure_tracing, logs_json_info

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from litestar.types import ControllerRouterHandler

    from shared.revocations import TokenRevocations
    from shared.settings import ServiceSettings

__all__ = ("CORS_ALLOW_HEADERS", "CORS_EXPOSE_HEADERS", "ServiceApp", "create_service_app", "verifier_from_settings")

_UNAUTHENTICATED_PATHS = ("/health", "/docs")

CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "traceparent",
    "tracestate",
    "X-Requested-With",  # Swagger UI's OAuth2 token request sends it
)
"""Request headers a page on an allowed origin may send (``*`` would not cover ``Authorization``)."""
CORS_EXPOSE_HEADERS = ("Location", "Retry-After", "Idempotent-Replayed", "WWW-Authenticate")
"""Response headers such a page may read."""


@dataclass
class ServiceApp:
    """What a service contributes to its app; everything else is the same for all services."""

    name: str
    """The service's name: its schema, its NATS user, its token audience, its span prefix."""
    version: str
    """The API version shown in the OpenAPI document."""
    settings: ServiceSettings
    """The service's settings, already loaded."""
    database: ServiceDatabase
    """The service's schema and migrations."""
    route_handlers: Sequence[ControllerRouterHandler]
    """The service's controllers."""
    description: str = ""
    """A paragraph for the OpenAPI document."""
    dependencies: Mapping[str, Provide] = field(default_factory=dict)
    """Dependencies the service's handlers need beyond ``db_session``, ``db_engine`` and ``user``."""
    token_verifier: TokenVerifier | None = None
    """How access tokens are checked; by default built from the settings."""
    on_startup: Sequence[Callable[..., Any]] = ()
    """Extra start-up hooks, run after the database and NATS are set up."""
    on_shutdown: Sequence[Callable[..., Any]] = ()
    """Extra shutdown hooks (Litestar runs them last, after NATS has drained and the pool closed)."""
    null_pool: bool = False
    """Open a new database connection per session (tests that run the app on another loop)."""
    token_revocations: TokenRevocations | None = None
    """The service's view of revoked accounts' ``tokens_valid_after``: tokens issued earlier get 401."""
    token_url: str = ""
    """Where Swagger UI signs in when the ``token_url`` setting is empty (users: its own ``/auth/token``)."""
    prebuilt_reads: bool = False
    """Whether the service reads with ``shared.db.driver_connection`` outside transactions: its API
    then keeps ``database_read_pool_size`` of its connections in a ``ReadPool`` for them."""


def verifier_from_settings(settings: ServiceSettings, audience: str) -> TokenVerifier:
    """A verifier that trusts the configured public keys, or users' JWKS when only a URL is set."""
    if not settings.jwt_public_keys.strip() and not settings.jwks_url.strip():
        names = " or ".join(variable_name(audience, field) for field in ("jwt_public_keys", "jwks_url"))
        raise SettingsError(f"{names} must be set: nothing else verifies access tokens")
    return TokenVerifier(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience or audience,
        public_keys=load_public_keys(settings.jwt_public_keys),
        jwks_url=settings.jwks_url,
    )


def _readiness_checks(app_config: ServiceApp, engine: AsyncEngine, state: dict[str, Any]) -> dict[str, ReadinessCheck]:
    database = app_config.database
    head = database.head()
    known = database.revisions()

    async def database_check() -> str | None:
        async with engine.connect() as connection:
            try:
                current = await connection.scalar(database.version_query())
            except ProgrammingError:  # no version table: never migrated
                current = None
        # A revision this code does not know is a newer one, migrated for the release rolling out
        # now: the old pods keep serving until the new ones are ready (migrations are additive).
        if current == head or (current is not None and current not in known):
            return None
        return f"migrations at {current}, head is {head}"

    checks: dict[str, ReadinessCheck] = {"database": database_check}
    if app_config.settings.nats_url:

        async def nats_check() -> str | None:
            connection = state.get("nats")
            return None if connection is not None and connection.is_connected else "not connected"

        checks["nats"] = nats_check
    return checks


def _under(root_path: str, url: str) -> str:
    return f"{root_path}{url}" if url.startswith("/") else url


def create_service_app(app_config: ServiceApp) -> Litestar:
    """Build a service's Litestar app with everything services share.

    Problem details for every error, health and readiness, Prometheus metrics on an internal port
    (``metrics_port``), OpenAPI docs at ``/docs`` (unless ``docs_enabled`` is off) with Swagger UI
    served offline, CORS and a body size limit from settings, JSON logs, OpenTelemetry spans named
    by route template, bearer-token authentication, the database session and (when configured) NATS.
    """
    settings = app_config.settings
    apply_litestar_overrides()
    configure_logging(level=settings.log_level, json=settings.log_json)
    configure_tracing(app_config.name)
    # Tests that run the app on another loop (null_pool) keep every read on the engine's connections.
    read_pool_size = settings.database_read_pool_size if app_config.prebuilt_reads and not app_config.null_pool else 0
    if read_pool_size and read_pool_size >= settings.database_pool_size:
        reads_name, pool_name = (
            variable_name(app_config.name.upper(), field) for field in ("database_read_pool_size", "database_pool_size")
        )
        raise SettingsError(
            f"{reads_name} ({read_pool_size}) must be below {pool_name} ({settings.database_pool_size}):"
            " the reads' connections are taken from it"
        )
    engine = service_engine(
        settings.database_url,
        pool_size=settings.database_pool_size - read_pool_size,
        null_pool=app_config.null_pool,
    )
    reads = None
    if read_pool_size:
        reads = ReadPool(engine, size=read_pool_size, application_name=f"{app_config.name}-api-reads")
    sessions = RequestSessions(engine, reads)
    verifier = app_config.token_verifier or verifier_from_settings(settings, app_config.name)
    client_addresses = ClientAddressResolver(settings.trusted_proxies, header=settings.forwarded_header)
    runtime: dict[str, Any] = {}

    async def internal_answer(path: str) -> Answer | None:
        return metrics_answer() if path == "/metrics" else None

    @asynccontextmanager
    async def connections(app: Litestar) -> AsyncIterator[None]:
        metrics_server = None
        try:
            if settings.metrics_port:
                # One granian worker per pod (the manifests' setting): its registry is the pod's.
                metrics_server = await start_internal_server(
                    settings.metrics_host, settings.metrics_port, internal_answer
                )
            if reads is not None:
                await reads.open()
            if settings.nats_url:
                connection = await connect_nats(
                    settings.nats_url,
                    name=f"{app_config.name}-api",
                    user=settings.nats_user,
                    password=settings.nats_password,
                    inbox_prefix=inbox_prefix(app_config.name),
                    connect_timeout=settings.nats_connect_timeout_seconds,
                )
                runtime["nats"] = app.state.nats = connection
            if app_config.token_revocations is not None:
                await app_config.token_revocations.start(engine)
            yield
        finally:
            if app_config.token_revocations is not None:
                await app_config.token_revocations.stop()
            if metrics_server is not None:
                metrics_server.close()
                await metrics_server.wait_closed()
            if "nats" in runtime:
                await runtime.pop("nats").drain()
            if reads is not None:
                await reads.close()
            await engine.dispose()

    openapi = (
        openapi_config(
            title=f"Relay Shop · {app_config.name}",
            version=app_config.version,
            description=app_config.description or None,
            # The service's own default is a path on this service: under its prefix behind the proxy.
            token_url=settings.token_url or _under(settings.root_path, app_config.token_url),
            root_path=settings.root_path,
        )
        if settings.docs_enabled
        else None
    )
    cors = (
        CORSConfig(
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=list(CORS_ALLOW_HEADERS),
            expose_headers=list(CORS_EXPOSE_HEADERS),
            max_age=600,
        )
        if settings.cors_allow_origins
        else None
    )

    app = Litestar(
        route_handlers=[
            *app_config.route_handlers,
            create_health_controller(_readiness_checks(app_config, engine, runtime)),
        ],
        dependencies={
            "user": Provide(provide_current_user),
            "client_address": Provide(client_addresses.of, sync_to_thread=False),
            "page": Provide(provide_page_request, sync_to_thread=False),
            "db_session": Provide(sessions.provide, sync_to_thread=False),
            "db_engine": Provide(sessions.provide_engine, sync_to_thread=False, use_cache=True),
            **app_config.dependencies,
        },
        plugins=[StrictStructSchemaPlugin()],
        signature_namespace={
            "AsyncEngine": AsyncEngine,
            "AsyncSession": AsyncSession,
            "Scope": Scope,
            "Message": Message,
        },
        middleware=[
            # Before authentication: hostile input is refused without verifying a token first.
            InputBoundaryMiddleware(),
            AuthenticationMiddleware(verifier, app_config.token_revocations),
        ],
        exception_handlers=exception_handlers(),
        before_send=[sessions.close, security_headers],
        before_request=refuse_loose_json,
        lifespan=[connections],
        on_startup=list(app_config.on_startup),
        on_shutdown=list(app_config.on_shutdown),
        openapi_config=openapi,
        cors_config=cors,
        request_max_body_size=settings.max_request_body_bytes,
        logging_config=None,
        debug=settings.debug,
    )
    document_operations(app)
    allow_every_method(app)
    # Around everything Litestar does, routing included: a request no route matches is recorded too.
    # Litestar has no setting for an outermost wrapper (its OpenTelemetry plugin is placed here by a
    # special case of its own): the app's handler is wrapped once it is built.
    json_info = logs_json_info(level=settings.log_level, json=settings.log_json)
    app.asgi_handler = RequestTelemetry(
        app.asgi_handler,
        service=app_config.name,
        exclude=_UNAUTHENTICATED_PATHS,
        access_log=settings.access_log,
        access_logger=JsonInfoLines(fallback=access_log) if json_info else None,
    )
    return app
