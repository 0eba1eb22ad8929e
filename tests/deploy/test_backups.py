"""The restore in deploy/README.md, tested on paper: its recovery Cluster is the prod Cluster with
``bootstrap.recovery`` from the folder the prod Cluster archives to, archiving into the new folder
the README tells the operator to set, and the steps around it reach what they name."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import NAMESPACES, ROOT, Manifest, named, pod_labels, render, workloads

README = ROOT / "deploy" / "README.md"


def recovery_manifest() -> Manifest:
    """The one YAML block of the README that recovers a Cluster."""
    blocks = re.findall(r"```yaml\n(.*?)^\s*```", README.read_text(), re.DOTALL | re.MULTILINE)
    found = [
        doc
        for block in blocks
        for doc in yaml.safe_load_all(textwrap.dedent(block))
        if isinstance(doc, dict) and doc.get("kind") == "Cluster" and "recovery" in doc["spec"].get("bootstrap", {})
    ]
    assert len(found) == 1, f"{len(found)} recovery Clusters in the README"
    return found[0]


@pytest.fixture(scope="module")
def prod() -> list[Manifest]:
    return render("prod")


@pytest.fixture(scope="module")
def cluster(prod: list[Manifest]) -> Manifest:
    return named(prod, "Cluster", "postgres")


def test_the_recovery_cluster_replaces_the_prod_cluster_under_the_same_name(cluster: Manifest) -> None:
    recovery = recovery_manifest()
    assert recovery["apiVersion"] == cluster["apiVersion"]
    # The same name: postgres-rw, and so every service's database URL, stay as they are.
    assert recovery["metadata"]["name"] == cluster["metadata"]["name"]
    assert recovery["metadata"]["namespace"] == NAMESPACES["prod"]
    assert recovery["metadata"]["labels"] == cluster["metadata"]["labels"]
    spec, prod_spec = recovery["spec"], cluster["spec"]
    assert set(spec) == set(prod_spec) | {"externalClusters"}
    for key in set(prod_spec) - {"bootstrap", "plugins"}:
        assert spec[key] == prod_spec[key], key  # roles, sizes, image, labels the policies select by


def test_it_recovers_from_the_folder_the_cluster_archives_to(cluster: Manifest, prod: list[Manifest]) -> None:
    recovery = recovery_manifest()["spec"]
    (archiving,) = cluster["spec"]["plugins"]
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    (how,) = recovery["bootstrap"].values()
    assert how["database"] == initdb["database"]
    assert how["owner"] == initdb["owner"]
    sources = {source["name"]: source for source in recovery["externalClusters"]}
    source = sources[how["source"]]["plugin"]
    assert source["name"] == archiving["name"]
    assert source["parameters"] == {
        "barmanObjectName": archiving["parameters"]["barmanObjectName"],
        "serverName": archiving["parameters"]["serverName"],
    }
    assert named(prod, "ObjectStore", source["parameters"]["barmanObjectName"])


def test_it_archives_into_the_new_folder_the_readme_tells_the_operator_to_set(cluster: Manifest) -> None:
    recovery = recovery_manifest()["spec"]
    (archiving,) = cluster["spec"]["plugins"]
    (new,) = recovery["plugins"]
    old_folder, new_folder = archiving["parameters"]["serverName"], new["parameters"]["serverName"]
    assert new_folder != old_folder  # it must not write into the history it recovers from
    assert new == {**archiving, "parameters": {**archiving["parameters"], "serverName": new_folder}}
    text = README.read_text()
    assert f"set `serverName: {new_folder}`" in text
    assert "components/postgres-backups/cluster-archives-wal.yaml" in text
    assert (ROOT / "deploy/k8s/components/postgres-backups/cluster-archives-wal.yaml").read_text().count(
        f"serverName: {old_folder}"
    ) == 1


def test_scaling_by_the_part_of_label_stops_every_writer(prod: list[Manifest]) -> None:
    # Step 1 of the restore scales every Deployment labelled part-of=relay-shop to zero.
    text = README.read_text()
    (selector,) = re.findall(r"scale deployment -l (\S+) --replicas=0", text)
    key, value = selector.split("=")
    writers: list[Any] = [
        w for w, _ in workloads(prod) if w["kind"] == "Deployment" and "component" in str(pod_labels(w))
    ]
    writers = [w for w in writers if pod_labels(w).get("app.kubernetes.io/component") in ("api", "worker")]
    assert len(writers) == 6
    assert all(w["metadata"]["labels"].get(key) == value for w in writers)


def test_the_restore_brings_back_every_deployment_it_stopped(prod: list[Manifest]) -> None:
    # `kubectl apply -k` restores only replicas the overlay sets; an HPA leaves a Deployment at 0
    # alone. So whatever has no replicas in the overlay must be scaled back by the README.
    text = README.read_text()
    scaled_back = dict(re.findall(r"scale deployment -l (\S+) --replicas=([1-9][0-9]*)", text))
    stopped = [w for w, _ in workloads(prod) if w["kind"] == "Deployment"]
    for deployment in stopped:
        if "replicas" in deployment["spec"]:
            continue
        labels = deployment["metadata"]["labels"]
        back = [
            int(n)
            for selector, n in scaled_back.items()
            if labels.get(selector.split("=")[0]) == selector.split("=")[1]
        ]
        assert back, f"{deployment['metadata']['name']} stays at 0 after the restore"
        hpa = named(prod, "HorizontalPodAutoscaler", deployment["metadata"]["name"])
        assert back[0] >= hpa["spec"]["minReplicas"]
