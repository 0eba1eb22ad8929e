"""The prod alerts ask about metrics the services really export, by labels those metrics really carry,
and tell the on-call person commands that exist.

Each service's real ``worker`` command runs against the session's Postgres and NATS, and each
service's app serves one request in this process with its internal metrics port on; their
``/metrics`` are scraped over HTTP. Every metric an alert or recording rule reads must be among
them (or be recorded by another rule), every label it matches, groups by or names in its text
must be on those metrics or be added by the scrape (the PodMonitor's relabelings and the
Prometheus Operator's target labels). The PromQL is read with a small scanner: strings, matchers
``{...}``, ranges ``[...]`` and grouping lists are taken out; what remains called like a function
is one, ``and``/``or``/``unless``/``bool`` are operators, and every other name is a metric.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.stack.servers import free_port
from devtools.testing import serve_app
from notify.app import create_app as create_notify_app
from orders.app import create_app as create_orders_app
from shared.events.streams import CONSUMERS
from tests.deploy.manifests import SERVICES, Manifest, render
from tests.notify.conftest import mail_server, notify_database, notify_database_url, notify_settings
from tests.orders.conftest import orders_database, orders_database_url, orders_settings
from tests.shared.commands import scrape_real_workers
from tests.users.conftest import users_database, users_database_url, users_settings
from users.app import create_app as create_users_app
from users.cli import main as users_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from litestar import Litestar

    from devtools.stack.servers import NatsServer, PostgresServer
    from shared.settings import ServiceSettings

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
# A route of each API that answers without a token or a body: one request makes its HTTP metrics.
FIRST_REQUEST = {"users": "/.well-known/jwks.json", "orders": "/products", "notify": "/notifications"}
# Labels every scraped series gets from the Prometheus Operator (namespace, pod, container, endpoint,
# job, instance, service for a ServiceMonitor only) and from the PodMonitor's relabelings.
OPERATOR_TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance"}
OPERATORS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "on", "ignoring", "by", "without"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"

Metrics = dict[str, set[str]]
"""Metric name (as scraped: counters with ``_total``) to the label names of its series."""


def scraped_metrics(text: str) -> Metrics:
    found: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


async def _scrape(client: httpx.AsyncClient, url: str) -> str | None:
    try:
        response = await client.get(url)
    except httpx.TransportError:
        return None
    return response.text if response.status_code == 200 else None


async def scrape_api(service: str, settings: ServiceSettings) -> Metrics:
    """The service's app with its internal metrics port on, after one request through its public port."""
    port = free_port()
    app = APPS[service](msgspec.structs.replace(settings, metrics_host="127.0.0.1", metrics_port=port))
    async with serve_app(app) as client:
        answer = await client.get(FIRST_REQUEST[service])
        assert answer.status_code < 500
        async with httpx.AsyncClient(timeout=5) as internal:
            text = await _scrape(internal, f"http://127.0.0.1:{port}/metrics")
    assert text is not None
    return scraped_metrics(text)


class Expression(msgspec.Struct):
    """What a PromQL expression reads: metrics with the labels they are matched on, grouping labels."""

    metrics: set[str]
    matchers: list[tuple[str, set[str]]]
    grouping: list[list[str]]
    made_labels: set[str]


def read_promql(expr: str) -> Expression:
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    # label_replace(v, "dst", ...) adds dst; read it before the strings are gone.
    # Its last four arguments: "dst", "replacement", "src", "regex".
    made = set(
        re.findall(
            r',\s*"([a-zA-Z_][a-zA-Z0-9_]*)"\s*,\s*"[^"]*"\s*,\s*"[a-zA-Z_][a-zA-Z0-9_]*"\s*,\s*"[^"]*"\s*\)', expr
        )
    )
    matchers = [
        (name, set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body)))
        for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text)
    ]
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    grouping = [[label.strip() for label in group.split(",") if label.strip()] for group in re.findall(GROUPING, text)]
    text = re.sub(GROUPING, " ", text)
    assert text.count("(") == text.count(")"), f"unbalanced: {expr}"
    names = set()
    for found in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = found.group()
        if name in OPERATORS or re.match(r"\s*\(", text[found.end() :]):
            continue  # an operator, or a function or aggregation called here
        if re.fullmatch(r"[0-9.e]+", name):
            continue
        names.add(name)
    return Expression(metrics=names, matchers=matchers, grouping=grouping, made_labels=made)


def rules(docs: list[Manifest]) -> list[dict[str, Any]]:
    (rule_set,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    return [rule for group in rule_set["spec"]["groups"] for rule in group["rules"]]


def target_labels(docs: list[Manifest]) -> set[str]:
    (monitor,) = [doc for doc in docs if doc["kind"] == "PodMonitor"]
    relabeled = {
        relabeling["targetLabel"]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]
        for relabeling in endpoint.get("relabelings", [])
    }
    return OPERATOR_TARGET_LABELS | relabeled


def test_the_scanner_finds_metrics_matchers_and_grouping() -> None:
    found = read_promql(
        'sum by (a, b) (label_replace(rate(x_total{c=~"5..", d!="y"}[5m]), "e", "$1", "a", "(.*)")) '
        "/ on (a) group_left max(y) > 0 and z == bool 1"
    )
    assert found.metrics == {"x_total", "y", "z"}
    assert found.matchers == [("x_total", {"c", "d"})]
    assert found.grouping == [["a", "b"], ["a"]]
    assert found.made_labels == {"e"}


@pytest.fixture
def api_settings(request: pytest.FixtureRequest) -> dict[str, ServiceSettings]:
    """Every service's test settings (sync: those fixtures prepare databases with asyncio.run)."""
    return {service: request.getfixturevalue(f"{service}_settings") for service in SERVICES}


async def test_every_alert_reads_exported_metrics_by_their_real_labels(
    postgres_server: PostgresServer,
    nats_server: NatsServer,
    tmp_path: Path,
    api_settings: dict[str, ServiceSettings],
) -> None:
    docs = render("prod")
    workers = {
        service: scraped_metrics(text)
        for service, text in (await scrape_real_workers(postgres_server, nats_server, tmp_path)).items()
    }
    apis = {service: await scrape_api(service, settings) for service, settings in api_settings.items()}
    exported: Metrics = {}
    for metrics in [*workers.values(), *apis.values()]:
        for name, labels in metrics.items():
            exported.setdefault(name, set()).update(labels)
    added = target_labels(docs)
    recorded: Metrics = {}
    for rule in rules(docs):
        if "record" in rule:
            grouping = read_promql(rule["expr"]).grouping
            recorded[rule["record"]] = set(grouping[0]) if grouping else set()
    known = exported | recorded

    problems = []
    for rule in rules(docs):
        name = rule.get("alert") or rule["record"]
        expression = read_promql(rule["expr"])
        assert expression.metrics, name
        problems += [f"{name}: {metric} is exported by no service" for metric in expression.metrics - set(known)]
        available = set().union(*(known.get(metric, set()) for metric in expression.metrics)) | added
        for metric, labels in expression.matchers:
            problems += [
                f"{name}: {metric} has no label {label}" for label in labels - known.get(metric, set()) - added
            ]
        for group in expression.grouping:
            missing = set(group) - available - expression.made_labels
            problems += [f"{name}: grouped by {label}, which no metric of it has" for label in missing]
        if "alert" in rule:
            result = set(expression.grouping[0]) if expression.grouping else available
            text = " ".join(rule["annotations"].values())
            for label in set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text)) - result:
                problems.append(f"{name}: its text names $labels.{label}, which its result does not carry")
    assert not problems, "\n".join(problems)

    # What the rules rely on beyond the names: the consumer's name starts with the service that
    # runs it (the dead-letter alerts take the service from it), and the HTTP metrics carry the
    # service's name (app_name) and the answer's status code.
    for service in {spec.service for spec in CONSUMERS}:
        assert "consumer" in workers[service]["relay_consumer_dead_lettered_total"], service
    assert all(spec.durable.startswith(f"{spec.service}-") for spec in CONSUMERS)
    for service, metrics in apis.items():
        assert {"app_name", "status_code", "path"} <= metrics[f"{service}_requests_total"]
    assert {"relay_ready", "relay_readiness_changes_total"} <= set(workers["users"]) & set(apis["users"])
    assert "notify_email_deliveries_total" in workers["notify"]


def test_every_alert_says_what_to_run_with_commands_that_exist() -> None:
    events = users_cli.commands["events"]
    assert isinstance(events, click.Group)
    subcommands = set(events.commands)
    alerts = [rule for rule in rules(render("prod")) if "alert" in rule]
    assert len(alerts) >= 6
    named_commands = set()
    for rule in alerts:
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        commands = re.findall(r"`([^`]+)`", annotations["description"])
        assert any(command.startswith("kubectl ") for command in commands), rule["alert"]
        for used in (used for command in commands for used in re.findall(r"\bevents ([a-z-]+)", command)):
            assert used in subcommands, f"{rule['alert']}: events {used} is no command"
            named_commands.add(used)
        assert rule["labels"]["severity"] in ("critical", "warning")
    assert {"status", "dead-letters", "replay"} <= named_commands
    # The service of each kubectl exec is one that has such a worker.
    for rule in alerts:
        for service in re.findall(r"deploy/([a-z]+)-worker", rule["annotations"]["description"]):
            assert service in SERVICES, rule["alert"]
