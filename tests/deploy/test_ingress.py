"""The way into prod: one HTTPS host, each API under its own path prefix, and everything that must
agree on those prefixes agreeing: the Ingress paths and rewrites, each service's root path (its
OpenAPI ``servers``), the public URLs in the settings (Swagger UI's token URL, notify's unsubscribe
links), TLS and the certificate, the live stream's proxy settings, the network policies and the
trusted proxies.

The routing test plays ingress-nginx's part: with ``use-regex``, every path of a host is a
case-insensitive regular expression anchored at the start, tried longest first, and the first
match is rewritten by ``rewrite-target`` (``$n`` are its groups). The OpenAPI test builds each
service's real app with its prod root path.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import pytest

from devtools.testing import serve_app
from notify.app import create_app as create_notify_app
from orders.app import create_app as create_orders_app
from shared.settings import ServiceSettings, SettingsError, load_settings
from tests.deploy.manifests import SERVICES, Manifest, generated, matches, named, pod_labels, render, workloads
from tests.notify.conftest import mail_server, notify_database, notify_database_url, notify_settings
from tests.orders.conftest import orders_database, orders_database_url, orders_settings
from tests.users.conftest import users_database, users_database_url, users_settings
from users.app import create_app as create_users_app
from users.settings import UsersSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar import Litestar

__all__ = (  # the services' own fixtures, used here as in their tests
    "mail_server",
    "notify_database",
    "notify_database_url",
    "notify_settings",
    "orders_database",
    "orders_database_url",
    "orders_settings",
    "users_database",
    "users_database_url",
    "users_settings",
)

APPS: dict[str, Callable[..., Litestar]] = {
    "users": create_users_app,
    "orders": create_orders_app,
    "notify": create_notify_app,
}
NGINX = "nginx.ingress.kubernetes.io/"
STREAM_PATH = "/notifications/stream"


@pytest.fixture(scope="module")
def prod() -> list[Manifest]:
    return render("prod")


def ingresses(docs: list[Manifest]) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == "Ingress"]


def config(docs: list[Manifest], service: str) -> dict[str, str]:
    data: dict[str, str] = generated(docs, "ConfigMap", f"{service}-config")["data"]
    return data


def public_host(docs: list[Manifest]) -> str:
    (host,) = {rule["host"] for ingress in ingresses(docs) for rule in ingress["spec"]["rules"]}
    return str(host)


class Route(msgspec.Struct, frozen=True):
    """Where ingress-nginx sends one request: the Service, its port, and the path it asks for."""

    service: str
    port: str
    path: str
    ingress: str


def route(docs: list[Manifest], host: str, url_path: str) -> Route | None:
    """The Service and upstream path ingress-nginx picks for ``url_path`` on ``host`` (None: 404)."""
    candidates = []
    for ingress in ingresses(docs):
        annotations = ingress["metadata"].get("annotations", {})
        assert annotations.get(f"{NGINX}use-regex") == "true", ingress["metadata"]["name"]
        for rule in ingress["spec"]["rules"]:
            if rule["host"] != host:
                continue
            for path in rule["http"]["paths"]:
                candidates.append((path, annotations.get(f"{NGINX}rewrite-target"), ingress["metadata"]["name"]))
    for path, target, name in sorted(candidates, key=lambda item: len(item[0]["path"]), reverse=True):
        found = re.match(path["path"], url_path, re.IGNORECASE)
        if found is None:
            continue
        upstream = url_path
        if target is not None:
            upstream = _rewrite(str(target), found)
        backend = path["backend"]["service"]
        return Route(service=backend["name"], port=backend["port"]["name"], path=upstream, ingress=name)
    return None


def _rewrite(target: str, found: re.Match[str]) -> str:
    """``rewrite-target`` with its ``$n`` replaced by the match's groups (an unmatched one is empty)."""
    return re.sub(r"\$(\d)", lambda ref: found.group(int(ref.group(1))) or "", target)


def default_of(settings: type[ServiceSettings], name: str) -> Any:
    """A setting's default value."""
    (field,) = [field for field in msgspec.structs.fields(settings) if field.name == name]
    return field.default


def prefix_of(docs: list[Manifest], service: str) -> str:
    root_path = config(docs, service)[f"{service.upper()}_ROOT_PATH"]
    assert root_path, f"{service} has no root path in prod"
    return root_path


def test_each_api_is_reached_under_its_root_path_with_the_prefix_stripped(prod: list[Manifest]) -> None:
    host = public_host(prod)
    prefixes = {service: prefix_of(prod, service) for service in SERVICES}
    assert len(set(prefixes.values())) == len(SERVICES)
    for service, prefix in prefixes.items():
        api = f"{service}-api"
        for asked, upstream in (
            (prefix, "/"),
            (f"{prefix}/", "/"),
            (f"{prefix}/health/live", "/health/live"),
            (f"{prefix}/a/b?c=d", "/a/b?c=d"),
        ):
            found = route(prod, host, asked)
            assert found is not None, asked
            assert (found.service, found.path) == (api, upstream), asked
            assert found.port == "http"
        # A longer word is not the prefix, and nothing is served outside the prefixes.
        assert route(prod, host, f"{prefix}x/health/live") is None
    assert route(prod, host, "/") is None
    assert route(prod, host, "/health/live") is None


def test_every_backend_is_an_api_service_port_that_only_the_ingress_namespace_may_reach(
    prod: list[Manifest],
) -> None:
    policies = [doc for doc in prod if doc["kind"] == "NetworkPolicy"]
    for ingress in ingresses(prod):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = named(prod, "Service", backend["name"])
                (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
                pods = [
                    (workload, template)
                    for workload, template in workloads(prod)
                    if matches({"matchLabels": service["spec"]["selector"]}, pod_labels(workload))
                ]
                assert pods, backend["name"]
                for workload, template in pods:
                    (container_port,) = [
                        p["containerPort"]
                        for c in template["spec"]["containers"]
                        for p in c.get("ports", [])
                        if p["name"] == port["targetPort"]
                    ]
                    admitted = {
                        frozenset(peer.get("namespaceSelector", {}).get("matchLabels", {}).items())
                        for policy in policies
                        if matches(policy["spec"]["podSelector"], pod_labels(workload))
                        for rule_ in policy["spec"].get("ingress", [])
                        if container_port in {p["port"] for p in rule_.get("ports", [])}
                        for peer in rule_["from"]
                    }
                    assert admitted == {frozenset({("relay-shop/ingress", "true")})}, backend["name"]


def test_the_public_urls_in_the_settings_go_through_the_ingress_to_real_routes(prod: list[Manifest]) -> None:
    host = public_host(prod)
    notify_base = urlsplit(config(prod, "notify")["NOTIFY_PUBLIC_BASE_URL"])
    assert (notify_base.scheme, notify_base.netloc) == ("https", host)
    assert notify_base.path == prefix_of(prod, "notify")
    found = route(prod, host, f"{notify_base.path}/notifications/unsubscribe?token=t")
    assert found is not None
    assert (found.service, found.path) == ("notify-api", "/notifications/unsubscribe?token=t")
    for service in ("orders", "notify"):
        token_url = urlsplit(config(prod, service)[f"{service.upper()}_TOKEN_URL"])
        assert (token_url.scheme, token_url.netloc) == ("https", host)
        found = route(prod, host, token_url.path)
        assert found is not None
        assert (found.service, found.path) == ("users-api", "/auth/token")
    for service in SERVICES:
        origins = config(prod, service)[f"{service.upper()}_CORS_ALLOW_ORIGINS"].split(",")
        assert f"https://{host}" in origins


def test_tls_for_the_host_from_the_certificate_and_plain_http_redirected(prod: list[Manifest]) -> None:
    host = public_host(prod)
    (certificate,) = [doc for doc in prod if doc["kind"] == "Certificate"]
    spec = certificate["spec"]
    assert spec["dnsNames"] == [host]
    assert spec["issuerRef"]["kind"] in ("ClusterIssuer", "Issuer")
    assert spec["issuerRef"]["group"] == "cert-manager.io"
    for ingress in ingresses(prod):
        (tls,) = ingress["spec"]["tls"]
        assert tls == {"hosts": [host], "secretName": spec["secretName"]}
        annotations = ingress["metadata"]["annotations"]
        # ingress-nginx adds Strict-Transport-Security (its `hsts` default) on TLS hosts only, and
        # redirects plain HTTP there.
        assert annotations[f"{NGINX}ssl-redirect"] == annotations[f"{NGINX}force-ssl-redirect"] == "true"


def test_the_live_stream_is_neither_buffered_nor_cut_by_the_proxy(prod: list[Manifest]) -> None:
    host = public_host(prod)
    prefix = prefix_of(prod, "notify")
    found = route(prod, host, f"{prefix}{STREAM_PATH}")
    assert found is not None
    assert (found.service, found.path) == ("notify-api", STREAM_PATH)
    stream = named(prod, "Ingress", found.ingress)["metadata"]["annotations"]
    assert stream[f"{NGINX}proxy-buffering"] == "off"
    # A stream lasts as long as its token (users' access-token lifetime), with heartbeats between.
    lifetime = default_of(UsersSettings, "access_token_ttl_seconds")
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(stream[f"{NGINX}{timeout}"]) >= max(lifetime, 60), timeout
    # Every other notify route keeps the proxy's ordinary buffering and timeouts.
    other = route(prod, host, f"{prefix}/notifications")
    assert other is not None
    assert other.ingress != found.ingress
    assert f"{NGINX}proxy-buffering" not in named(prod, "Ingress", other.ingress)["metadata"]["annotations"]


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_the_proxy_lets_through_every_body_the_services_accept(prod: list[Manifest]) -> None:
    # Larger bodies then get the service's own 413 problem document rather than the proxy's page.
    default = default_of(ServiceSettings, "max_request_body_bytes")
    for ingress in ingresses(prod):
        limit = ingress["metadata"]["annotations"].get(f"{NGINX}proxy-body-size", "1m")
        for service in SERVICES:
            accepted = int(config(prod, service).get(f"{service.upper()}_MAX_REQUEST_BODY_BYTES", default))
            assert _bytes(limit) >= accepted, (ingress["metadata"]["name"], service)


def test_every_api_trusts_the_ingress_pods_for_the_header_ingress_nginx_writes(prod: list[Manifest]) -> None:
    for service in SERVICES:
        data = config(prod, service)
        prefix = service.upper()
        assert data.get(f"{prefix}_TRUSTED_PROXIES"), service
        # ingress-nginx sets X-Forwarded-For; the services read it unless told otherwise.
        assert data.get(f"{prefix}_FORWARDED_HEADER", "x-forwarded-for") == "x-forwarded-for"


@pytest.fixture(params=SERVICES)
def service_settings(request: pytest.FixtureRequest) -> tuple[str, ServiceSettings]:
    """Each service with its test settings (sync: those fixtures prepare databases with asyncio.run)."""
    return request.param, request.getfixturevalue(f"{request.param}_settings")


async def test_each_app_names_its_prod_root_path_in_its_openapi_servers(
    prod: list[Manifest], service_settings: tuple[str, ServiceSettings]
) -> None:
    service, settings = service_settings
    prefix = prefix_of(prod, service)
    token_url = config(prod, service).get(f"{service.upper()}_TOKEN_URL", "")
    app = APPS[service](msgspec.structs.replace(settings, root_path=prefix, docs_enabled=True, token_url=token_url))
    async with serve_app(app) as client:
        document = (await client.get("/docs/openapi.json")).json()
        page = (await client.get("/docs")).text
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
        assert assets
        for asset in assets:
            # The browser asks for it under the prefix; the proxy strips the prefix again.
            assert asset.startswith(f"{prefix}/docs/assets/"), asset
            assert (await client.get(asset.removeprefix(prefix))).status_code == 200, asset
    assert document["servers"] == [{"url": prefix}]
    # Swagger UI signs in at users' /auth/token: users' own default follows its prefix; the others
    # are given the public URL (kustomization.yaml), which the routing test follows.
    signs_in_at = document["components"]["securitySchemes"]["OAuth2"]["flows"]["password"]["tokenUrl"]
    assert signs_in_at == (token_url or f"{prefix}/auth/token")
    # The routes the public URLs lead to exist at the root of the app, where the proxy sends them.
    wanted = {"users": "/auth/token", "orders": "/products", "notify": "/notifications/unsubscribe"}[service]
    assert wanted in document["paths"]


async def test_without_a_root_path_the_document_is_served_at_the_root(users_settings: UsersSettings) -> None:
    async with serve_app(create_users_app(users_settings)) as client:
        document: dict[str, Any] = (await client.get("/docs/openapi.json")).json()
    assert document["servers"] == [{"url": "/"}]


@pytest.mark.parametrize("value", ["", "/users", "/shop/api-v1", "/a.b_c~d"])
def test_a_root_path_is_a_clean_path_prefix(value: str) -> None:
    settings = load_settings(
        ServiceSettings, "users", {"USERS_DATABASE_URL": "postgresql://x/y", "USERS_ROOT_PATH": value}
    )
    assert settings.root_path == value


@pytest.mark.parametrize(
    "value", ["users", "/users/", "/", "//users", "/a b", "/a?b", "https://shop.example.com/users"]
)
def test_any_other_root_path_is_refused_by_name(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^USERS_ROOT_PATH: a path prefix starts with /"):
        load_settings(ServiceSettings, "users", {"USERS_DATABASE_URL": "postgresql://x/y", "USERS_ROOT_PATH": value})


def test_cert_manager_can_answer_an_http01_challenge_through_the_ingress(prod: list[Manifest]) -> None:
    # default-deny covers the solver pod cert-manager starts here; without a way in from the ingress
    # controller the certificate is never issued.
    solver = {"acme.cert-manager.io/http01-solver": "true"}
    policies = [
        doc
        for doc in prod
        if doc["kind"] == "NetworkPolicy" and doc["spec"]["podSelector"] and matches(doc["spec"]["podSelector"], solver)
    ]
    (policy,) = policies
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"relay-shop/ingress": "true"}}}]
    assert rule["ports"] == [{"port": 8089, "protocol": "TCP"}]
    assert not policy["spec"].get("egress")
