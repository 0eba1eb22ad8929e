"""What every service shows the world besides its routes: the OpenAPI document, the docs page,
metrics on an internal port only, and CORS for pages on other origins.

Each test walks all three services (``SERVICES``), each app built from that service's own test
settings, so a new route or a new service is covered without anyone adding it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import uuid
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest
from litestar.routes import HTTPRoute
from litestar.utils.sync import AsyncCallable

from devtools.stack.servers import free_port
from devtools.testing import serve_app
from shared.app import CORS_ALLOW_HEADERS
from shared.openapi import document_operations
from tests.contract.conftest import SERVICES

if TYPE_CHECKING:
    from litestar import Litestar

    from shared.auth import AccessTokenSigner
    from shared.settings import ServiceSettings

PROBLEM_JSON = "application/problem+json"
ORIGIN = "https://shop.example.com"


class Service:
    """One service's name and test settings; ``build`` makes its app with some settings changed."""

    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.name = name
        self.settings = settings

    def build(self, **changes: Any) -> Litestar:
        return SERVICES[self.name](msgspec.structs.replace(self.settings, **changes))


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest) -> Service:
    """Each service in turn (a sync fixture: the settings fixtures prepare databases with asyncio.run)."""
    return Service(request.param, request.getfixturevalue(f"{request.param}_settings"))


@pytest.fixture
def users(users_settings: ServiceSettings) -> Service:
    return Service("users", users_settings)


@pytest.fixture
def orders(orders_settings: ServiceSettings) -> Service:
    return Service("orders", orders_settings)


@pytest.fixture
def notify(notify_settings: ServiceSettings) -> Service:
    return Service("notify", notify_settings)


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in methods
    ]


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


async def test_every_error_is_documented_as_a_problem_and_every_operation_has_a_stable_id(service: Service) -> None:
    async with serve_app(service.build()) as client:
        document = (await client.get("/docs/openapi.json")).json()
    ids = [operation.get("operationId") for _, _, operation in operations(document)]
    assert all(ids), ids
    assert len(set(ids)) == len(ids), ids
    problem = document["components"]["schemas"]["Problem"]
    assert {"status", "title"} <= set(problem["required"])
    for path, method, operation in operations(document):
        where = f"{service.name} {method.upper()} {path}"
        responses = operation["responses"]
        assert "401" in responses, where
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == [PROBLEM_JSON], (where, status)
                assert response["content"][PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
        if operation.get("security"):
            assert {"401"} <= set(responses), where
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= set(responses), where
        if "{" in path:
            assert "404" in responses, where
    assert not any(path.startswith(("/metrics", "/health", "/docs")) for path in document["paths"])


def test_guards_decide_security_and_403_and_request_structs_refusing_unknown_fields_are_closed(
    service: Service,
) -> None:
    app = service.build()
    document = app.openapi_schema.to_schema()
    from shared.auth import admin_only, signed_in

    by_id = {operation["operationId"]: operation for _, _, operation in operations(document)}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            operation = by_id[str(handler.operation_id)]
            guards = [guard for layer in handler.ownership_layers for guard in (getattr(layer, "guards", None) or ())]
            if admin_only in guards or signed_in in guards:
                assert operation["security"], handler.operation_id
            assert ("403" in operation["responses"]) >= (admin_only in guards), handler.operation_id
            body = handler.parsed_fn_signature.parameters.get("data")
            if body is None:
                continue
            struct = body.annotation
            while not isinstance(struct, type) and getattr(struct, "__args__", None):
                struct = struct.__args__[0]
            info = msgspec.inspect.type_info(struct)
            if isinstance(info, msgspec.inspect.StructType):
                ref = operation["requestBody"]["content"]
                schema = resolve(document, next(iter(ref.values()))["schema"])
                assert (schema.get("additionalProperties") is False) == info.forbid_unknown_fields, handler.operation_id


def test_a_route_without_an_operation_id_refuses_to_start() -> None:
    from litestar import Litestar, get

    @get("/anonymous", sync_to_thread=False)
    def anonymous() -> str:
        return "x"

    from litestar.exceptions import ImproperlyConfiguredException

    with pytest.raises(ImproperlyConfiguredException, match="operation_id"):
        document_operations(Litestar([anonymous]))


async def test_the_event_stream_is_documented_as_text_event_stream(notify: Service) -> None:
    async with serve_app(notify.build()) as client:
        document = (await client.get("/docs/openapi.json")).json()
    stream = document["paths"]["/notifications/stream"]["get"]["responses"]["200"]
    assert list(stream["content"]) == ["text/event-stream"]


async def test_metrics_are_served_on_the_internal_port_and_not_on_the_api_port(service: Service) -> None:
    port = free_port()
    async with serve_app(service.build(metrics_port=port)) as client:
        document = (await client.get("/docs/openapi.json")).json()
        route = next(path for path, method, _ in operations(document) if method == "get" and "{" not in path)
        await client.get(route)
        assert (await client.get("/metrics")).status_code == 404
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as internal:
            metrics = await internal.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert f"{service.name}_requests_total" in metrics.text
            assert f'path="{route}"' in metrics.text
            assert (await internal.get("/orders")).status_code == 404  # the API is not on this port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as internal:
        with pytest.raises(httpx.ConnectError):  # closed with the app
            await internal.get("/metrics")


async def test_docs_can_be_switched_off(service: Service) -> None:
    async with serve_app(service.build(docs_enabled=False)) as client:
        for path in ("/docs", "/docs/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"].startswith(PROBLEM_JSON)


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


async def test_swagger_ui_loads_only_assets_the_service_serves_itself(service: Service) -> None:
    async with serve_app(service.build()) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        parser = _Assets()
        parser.feed(page.text)
        assert len(parser.urls) >= 3, parser.urls
        for url in parser.urls:
            assert url.startswith("/docs/assets/"), url
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0
        assert not re.search(r"https?://", page.text.split("spec:", 1)[0]), "the page head names another host"


async def test_swagger_ui_signs_in_with_the_oauth2_password_flow_at_users_token_endpoint(
    users: Service, orders: Service, notify: Service
) -> None:
    users_token = "/auth/token"
    elsewhere = "https://shop.example.com/users/auth/token"
    for service, token_url, expected in (
        (users, "", users_token),
        (orders, elsewhere, elsewhere),
        (notify, elsewhere, elsewhere),
    ):
        async with serve_app(service.build(token_url=token_url)) as client:
            document = (await client.get("/docs/openapi.json")).json()
        flow = document["components"]["securitySchemes"]["OAuth2"]["flows"]["password"]
        assert flow["tokenUrl"] == expected, service.name
        secured = [operation for _, _, operation in operations(document) if operation.get("security")]
        assert secured, service.name
        assert all({"OAuth2": []} in operation["security"] for operation in secured), service.name


async def test_the_password_flow_form_swagger_ui_posts_gets_a_token(users: Service) -> None:
    async with serve_app(users.build()) as client:
        email = "swagger.user@example.com"
        registered = await client.post(
            "/auth/register", json={"email": email, "password": "swagger password", "display_name": "S"}
        )
        assert registered.status_code == 201, registered.text
        # What Swagger UI sends for the password flow: the form, X-Requested-With, and the (empty)
        # client id and secret as HTTP Basic client credentials (RFC 6749 2.3.1).
        token = await client.post(
            "/auth/token",
            data={"grant_type": "password", "username": email, "password": "swagger password"},
            headers={"Authorization": "Basic Og==", "X-Requested-With": "XMLHttpRequest"},
        )
        assert token.status_code == 200, token.text
        assert token.json()["token_type"] == "bearer"
        # Basic credentials mean nothing anywhere else.
        assert (await client.get("/users/me", headers={"Authorization": "Basic Og=="})).status_code == 401
        assert (
            await client.post("/auth/refresh", json={"refresh_token": "x"}, headers={"Authorization": "Basic Og=="})
        ).status_code == 401


async def test_a_page_on_an_allowed_origin_may_send_the_headers_it_needs_and_read_the_answer(service: Service) -> None:
    app = service.build(cors_allow_origins=(ORIGIN,))
    async with serve_app(app) as client:
        for path in app.openapi_schema.to_schema()["paths"]:
            preflight = await client.options(
                re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path),
                headers={
                    "Origin": ORIGIN,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": ",".join(header.lower() for header in CORS_ALLOW_HEADERS),
                },
            )
            assert preflight.status_code in (200, 204), (path, preflight.status_code)
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            allowed = {item.strip().lower() for item in preflight.headers["access-control-allow-headers"].split(",")}
            assert {header.lower() for header in CORS_ALLOW_HEADERS} <= allowed, path
            # What a shop page needs: sign in, order idempotently, resume the stream, and Swagger UI's sign-in.
            assert {"authorization", "content-type", "idempotency-key", "last-event-id", "x-requested-with"} <= allowed
        refused = await client.options(
            "/health/live", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert refused.headers.get("access-control-allow-origin") != "https://evil.example"
        answer = await client.get("/no-such-route", headers={"Origin": ORIGIN})
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        exposed = {item.strip().lower() for item in answer.headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "idempotent-replayed", "location"} <= exposed


async def test_a_page_on_another_origin_signs_in_orders_and_reads_its_stream(
    users: Service, orders: Service, notify: Service, access_token_signer: AccessTokenSigner
) -> None:
    """The three calls the issue names, as a browser on ``ORIGIN`` makes them (each after its preflight)."""
    headers = {"Origin": ORIGIN}
    async with serve_app(users.build(cors_allow_origins=(ORIGIN,))) as users_api:
        email = f"cors.{uuid.uuid4().hex[:6]}@example.com"
        await users_api.post("/auth/register", json={"email": email, "password": "cors password", "display_name": "C"})
        signed = await users_api.post(
            "/auth/login", json={"email": email, "password": "cors password"}, headers=headers
        )
        assert signed.status_code == 200
        assert signed.headers["access-control-allow-origin"] == ORIGIN
    user = uuid.uuid4()
    bearer = {"Authorization": f"Bearer {access_token_signer.sign(subject=user, roles=['user'])}"}
    async with serve_app(orders.build(cors_allow_origins=(ORIGIN,))) as orders_api:
        placed = await orders_api.post(
            "/orders",
            json={"items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]},
            headers=headers | bearer | {"Idempotency-Key": "cors"},
        )
        # The product does not exist: a problem the page can read, with the CORS headers.
        assert placed.status_code == 422, placed.text
        assert placed.headers["access-control-allow-origin"] == ORIGIN
    notify_app = notify.build(cors_allow_origins=(ORIGIN,))
    async with serve_app(notify_app):
        status, stream_headers = await response_start(notify_app, "/notifications/stream", headers | bearer)
    assert status == 200
    assert stream_headers["content-type"].startswith("text/event-stream")
    assert stream_headers["access-control-allow-origin"] == ORIGIN


async def response_start(app: Litestar, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The status and headers of a GET, read as soon as they are sent: a stream never completes,
    and httpx's ASGI transport hands over only complete responses."""
    started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    disconnected = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and not started.done():
            started.set_result(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 54321),
        "server": ("testserver", 80),
        "state": {},
    }
    call = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]  # plain dicts for Litestar's ASGI types
    try:
        message = await asyncio.wait_for(started, 10)
    finally:
        disconnected.set()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await call
    return message["status"], {name.decode().lower(): value.decode() for name, value in message["headers"]}


async def test_allow_names_every_documented_method_of_a_path(service: Service) -> None:
    async with serve_app(service.build()) as client:
        document = (await client.get("/docs/openapi.json")).json()
        for path, item in document["paths"].items():
            documented = {method.upper() for method in item if method != "parameters"} | {"OPTIONS"}
            url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            answers = [await client.options(url)]
            unused = sorted({"GET", "PUT", "PATCH", "DELETE", "POST"} - documented)
            if unused:
                answers.append(await client.request(unused[0], url))
                assert answers[-1].status_code == 405, (path, unused[0])
            for answer in answers:
                if answer.status_code in (204, 405):  # OPTIONS on a guarded path answers 401 first
                    allowed = {method.strip() for method in answer.headers["allow"].split(",")}
                    assert allowed == documented, (service.name, path, answer.request.method)


def _types(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    schema = resolve(document, schema)
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set(schema.get("type") or ())
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        found |= _types(document, option)
    return found


async def test_a_json_body_value_of_another_type_than_documented_is_refused_naming_the_field(
    service: Service, access_token_signer: AccessTokenSigner
) -> None:
    """``"is_active": 0`` is no boolean and ``"price": "100"`` no integer, whatever a lenient decoder thinks."""
    admin = {"Authorization": f"Bearer {access_token_signer.sign(subject=uuid.uuid4(), roles=['admin'])}"}
    wrong = {"integer": "1", "boolean": 0}
    tried = 0
    async with serve_app(service.build()) as client:
        document = (await client.get("/docs/openapi.json")).json()
        for path, method, operation in operations(document):
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            schema = resolve(document, content["application/json"]["schema"])
            for name, prop in schema.get("properties", {}).items():
                kinds = _types(document, prop) & set(wrong)
                if not kinds or "string" in _types(document, prop):
                    continue
                value = wrong[sorted(kinds)[0]]
                url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
                answer = await client.request(
                    method, url, json={name: value}, headers=admin | {"Idempotency-Key": uuid.uuid4().hex}
                )
                where = f"{service.name} {method.upper()} {path} {name}={value!r}"
                assert answer.status_code == 400, (where, answer.text)
                assert answer.headers["content-type"].startswith(PROBLEM_JSON), where
                assert name in {error["field"] for error in answer.json()["errors"]}, (where, answer.text)
                tried += 1
    assert tried or service.name == "notify", "no integer or boolean body field to try"


def test_fields_left_out_of_a_partial_update_keep_their_bounds_in_the_document(
    users: Service, orders: Service, notify: Service
) -> None:
    """``price: MinorUnits | UnsetType`` is documented with ``MinorUnits``' minimum and maximum."""
    import typing

    bounds = {"ge": "minimum", "le": "maximum", "min_length": "minLength", "max_length": "maxLength"}
    checked = 0
    for service in (users, orders, notify):
        app = service.build()
        document = app.openapi_schema.to_schema()
        for route in app.routes:
            if not isinstance(route, HTTPRoute):
                continue
            for handler in route.route_handlers:
                if handler.parsed_data_field is None:
                    continue
                struct = handler.parsed_data_field.annotation
                info = msgspec.inspect.type_info(struct)
                if not isinstance(info, msgspec.inspect.StructType):
                    continue
                schema = document["components"]["schemas"][struct.__name__]
                hints = typing.get_type_hints(struct, include_extras=True)
                for field in info.fields:
                    if msgspec.UnsetType not in typing.get_args(hints[field.name]):
                        continue
                    inner = field.type.type if isinstance(field.type, msgspec.inspect.Metadata) else field.type
                    for attribute, keyword in bounds.items():
                        if getattr(inner, attribute, None) is not None:
                            documented = schema["properties"][field.encode_name].get(keyword)
                            assert documented == getattr(inner, attribute), (service.name, field.name, keyword)
                            checked += 1
    assert checked, "no bounded field of a partial update to check"


async def test_a_second_process_on_a_taken_metrics_port_still_serves_its_api(orders: Service) -> None:
    """Two granian workers of one API: the second cannot bind the metrics port, and keeps serving."""
    port = free_port()
    async with serve_app(orders.build(metrics_port=port)), serve_app(orders.build(metrics_port=port)) as second:
        assert (await second.get("/health/live")).status_code == 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as internal:
            assert (await internal.get("/metrics")).status_code == 200


def test_no_route_hands_its_work_to_a_thread(service: Service) -> None:
    """Guards, dependencies, hooks and handlers all run on the event loop.

    Litestar runs a plain ``def`` guard or request hook in its thread pool (and a sync
    handler or dependency too unless ``sync_to_thread=False``): on a hot path that is a thread hop
    per request for work that never blocks. Anything here that blocks belongs in a thread on
    purpose, and then in this list with a reason.
    """
    app = service.build()
    offloaded = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            where = f"{sorted(getattr(handler, 'http_methods', []))} {route.path}"
            for guard in handler.resolve_guards():
                if isinstance(guard, AsyncCallable) or not inspect.iscoroutinefunction(guard):
                    offloaded.append(f"{where}: guard {getattr(guard, 'func', guard)!r}")
            for name, provider in handler.resolve_dependencies().items():
                if provider.has_sync_callable and provider.sync_to_thread:
                    offloaded.append(f"{where}: dependency {name}")
            if getattr(handler, "has_sync_callable", False) and handler.sync_to_thread:
                offloaded.append(f"{where}: handler")
            hooks = (handler.resolve_before_request(), handler.resolve_after_response(), handler.after_request)
            for hook in hooks:
                if isinstance(hook, AsyncCallable):
                    offloaded.append(f"{where}: hook {hook.func!r}")
    assert not offloaded, "\n".join(offloaded)
