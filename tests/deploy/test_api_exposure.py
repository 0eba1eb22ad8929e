"""What each API pod exposes, and to whom: clients reach the API port, Prometheus only the metrics
port; the scrape annotations point at the metrics port; prod serves no /docs and names its CORS
origins and the URL Swagger UI signs in at."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import OVERLAYS, SERVICES, Manifest, containers, generated, named, render

API_PORT = 8000


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(str(request.param))


def _api_pod(docs: list[Manifest], service: str) -> Manifest:
    template: Manifest = named(docs, "Deployment", f"{service}-api")["spec"]["template"]
    return template


def _ingress_ports(policy: Manifest) -> list[tuple[set[str], set[Any]]]:
    """(namespace labels allowed, ports) for each ingress rule."""
    rules = []
    for rule in policy["spec"].get("ingress", []):
        sources = {
            f"{key}={value}"
            for peer in rule.get("from", [])
            for key, value in peer.get("namespaceSelector", {}).get("matchLabels", {}).items()
        }
        rules.append((sources, {port["port"] for port in rule.get("ports", [])}))
    return rules


def test_prometheus_scrapes_the_api_on_its_metrics_port_which_is_not_the_api_port(docs: list[Manifest]) -> None:
    for service in SERVICES:
        config = generated(docs, "ConfigMap", f"{service}-config")["data"]
        metrics_port = int(config[f"{service.upper()}_METRICS_PORT"])
        assert metrics_port != API_PORT
        assert config[f"{service.upper()}_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - inside the pod
        pod = _api_pod(docs, service)
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        assert annotations["prometheus.io/path"] == "/metrics"
        [(_, api)] = [(name, c) for name, c in containers(pod["spec"]) if c["name"] == "api"]
        declared = {port["name"]: port["containerPort"] for port in api["ports"]}
        assert declared == {"http": API_PORT, "metrics": metrics_port}
        # The Service that clients reach carries the API port only.
        service_ports = named(docs, "Service", f"{service}-api")["spec"]["ports"]
        assert [port["targetPort"] for port in service_ports] == ["http"]


def test_only_monitoring_reaches_the_metrics_port_and_only_the_ingress_the_api_port(docs: list[Manifest]) -> None:
    for service in SERVICES:
        metrics_port = int(generated(docs, "ConfigMap", f"{service}-config")["data"][f"{service.upper()}_METRICS_PORT"])
        rules = _ingress_ports(named(docs, "NetworkPolicy", f"{service}-api"))
        reachable = {port for _, ports in rules for port in ports}
        assert reachable == {API_PORT, metrics_port}
        for sources, ports in rules:
            if metrics_port in ports:
                assert sources == {"relay-shop/monitoring=true"}, service
            if API_PORT in ports:
                assert sources == {"relay-shop/ingress=true"}, service


def test_prod_switches_docs_off_and_names_its_origins_and_sign_in_url() -> None:
    docs = render("prod")
    for service in SERVICES:
        config = generated(docs, "ConfigMap", f"{service}-config")["data"]
        prefix = service.upper()
        assert config[f"{prefix}_DOCS_ENABLED"] == "false"
        assert all(origin.startswith("https://") for origin in config[f"{prefix}_CORS_ALLOW_ORIGINS"].split(","))
        if service != "users":
            assert config[f"{prefix}_TOKEN_URL"].endswith("/auth/token")
    dev = render("dev")
    for service in SERVICES:
        assert generated(dev, "ConfigMap", f"{service}-config")["data"][f"{service.upper()}_DOCS_ENABLED"] == "true"
