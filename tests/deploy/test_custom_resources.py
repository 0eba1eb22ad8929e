"""The custom resources of the prod overlay (certificate, backups, scraping, alerts) validate against
strict schemas written from their CRDs (``custom_resources.py``), and refer to what exists.

kubernetes-validate knows the core API only; these kinds are checked here instead, field by field,
and a misspelt field anywhere fails (the mutation test proves each schema refuses one).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import pytest

from tests.deploy.custom_resources import CUSTOM_SCHEMAS
from tests.deploy.manifests import OVERLAYS, Manifest, containers, matches, named, pod_labels, render, workloads

CNPG_CLUSTER = ("postgresql.cnpg.io/v1", "Cluster")
BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"


def custom_resources(docs: list[Manifest]) -> list[Manifest]:
    core_groups = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
    return [doc for doc in docs if doc["apiVersion"] not in core_groups]


def validate(doc: Manifest) -> list[str]:
    schema = CUSTOM_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(doc)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_custom_resource_validates_against_its_schema(overlay: str) -> None:
    found = custom_resources(render(overlay))
    unknown = {(doc["apiVersion"], doc["kind"]) for doc in found} - set(CUSTOM_SCHEMAS) - {CNPG_CLUSTER}
    assert not unknown, f"no schema for {unknown}"
    failures = {
        f"{doc['kind']}/{doc['metadata']['name']}": errors
        for doc in found
        if (doc["apiVersion"], doc["kind"]) != CNPG_CLUSTER and (errors := validate(doc))
    }
    assert not failures


def _objects_in(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every mapping inside ``value``."""
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        found.append(path)
        for key, item in value.items():
            found += _objects_in(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _objects_in(item, (*path, index))
    return found


def test_each_schema_refuses_a_misspelt_field_at_every_level_of_a_real_resource() -> None:
    docs = [doc for doc in custom_resources(render("prod")) if (doc["apiVersion"], doc["kind"]) != CNPG_CLUSTER]
    assert {(doc["apiVersion"], doc["kind"]) for doc in docs} == set(CUSTOM_SCHEMAS)
    for doc in docs:
        for path in _objects_in(doc["spec"], ("spec",)):
            if path[-1] in ("labels", "annotations", "matchLabels", "parameters"):
                continue  # free-form maps of strings
            mutated = copy.deepcopy(doc)
            target = mutated
            for key in path:
                target = target[key]
            target["misspelt"] = "x"
            assert validate(mutated), f"{doc['kind']} accepts an unknown field at {list(path)}"


def test_the_certificate_key_is_a_real_ecdsa_or_rsa_size() -> None:
    (certificate,) = [doc for doc in render("prod") if doc["kind"] == "Certificate"]
    key = certificate["spec"]["privateKey"]
    allowed: dict[str, set[int | None]] = {"ECDSA": {256, 384, 521}, "RSA": {2048, 3072, 4096}, "Ed25519": {None}}
    assert key.get("size") in allowed[key["algorithm"]]
    assert key["rotationPolicy"] == "Always"


def test_the_cluster_archives_to_the_object_store_the_nightly_backup_uses() -> None:
    docs = render("prod")
    cluster = named(docs, "Cluster", "postgres")
    (plugin,) = cluster["spec"]["plugins"]
    assert plugin == {
        "name": BARMAN_PLUGIN,
        "isWALArchiver": True,
        "parameters": {
            "barmanObjectName": plugin["parameters"]["barmanObjectName"],
            "serverName": plugin["parameters"]["serverName"],
        },
    }
    store = named(docs, "ObjectStore", plugin["parameters"]["barmanObjectName"])
    assert store["spec"]["configuration"]["destinationPath"].startswith(("s3://", "gs://", "https://"))
    assert "serverName" not in store["spec"]["configuration"]  # the plugin wants it empty here
    (scheduled,) = [doc for doc in docs if doc["kind"] == "ScheduledBackup"]
    spec = scheduled["spec"]
    assert spec["cluster"] == {"name": cluster["metadata"]["name"]}
    assert spec["method"] == "plugin"
    assert spec["pluginConfiguration"] == {"name": BARMAN_PLUGIN}
    # CloudNativePG's schedule has six fields, seconds first: five would run every minute's second N.
    fields = spec["schedule"].split()
    assert len(fields) == 6, spec["schedule"]
    assert all(re.fullmatch(r"[0-9*/,-]+", field) for field in fields)
    assert spec["immediate"] is True  # a new cluster is restorable from its first hour


def test_the_instances_may_reach_an_object_store_over_https() -> None:
    docs = render("prod")
    policy = named(docs, "NetworkPolicy", "postgres-cnpg")
    outside = [
        rule
        for rule in policy["spec"]["egress"]
        if any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peer in rule["to"])
    ]
    assert any(443 in {port["port"] for port in rule["ports"]} for rule in outside)


def test_the_pod_monitor_scrapes_every_api_and_worker_on_a_declared_metrics_port() -> None:
    docs = render("prod")
    (monitor,) = [doc for doc in docs if doc["kind"] == "PodMonitor"]
    ports = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    assert all(endpoint["path"] == "/metrics" for endpoint in monitor["spec"]["podMetricsEndpoints"])
    scraped = 0
    for workload, template in workloads(docs):
        labels = pod_labels(workload)
        if labels.get("app.kubernetes.io/component") not in ("api", "worker") or workload["kind"] != "Deployment":
            continue
        if labels.get("app.kubernetes.io/name") not in ("users", "orders", "notify"):
            continue
        assert matches(monitor["spec"]["selector"], labels), workload["metadata"]["name"]
        declared = {port["name"] for _, c in containers(template["spec"]) for port in c.get("ports", [])}
        assert ports & declared, workload["metadata"]["name"]
        # The annotations (for a Prometheus without the operator) name the same port.
        numbers = {
            port["containerPort"]
            for _, c in containers(template["spec"])
            for port in c.get("ports", [])
            if port["name"] in ports
        }
        assert int(template["metadata"]["annotations"]["prometheus.io/port"]) in numbers
        scraped += 1
    assert scraped == 6
