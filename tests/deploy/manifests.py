"""Rendering the kustomize overlays and walking what they hold, for the deployment tests."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from shared.events.topology import SERVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
NAMESPACES = {"dev": "relay-dev", "prod": "relay"}
SERVICES = SERVICE_NAMES
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """A command from this environment's bin directory (the pinned dev tools) before PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: it comes with the dev dependencies (uv sync)")
    return found


@functools.cache
def _render_text(overlay: str) -> str:
    return subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def render(overlay: str) -> list[Manifest]:
    """Every object of an overlay, as ``kubectl kustomize`` renders it (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_render_text(overlay)) if doc]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` called ``name``."""
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def generated(docs: list[Manifest], kind: str, name: str) -> Manifest:
    """A generated ConfigMap or Secret by its name before kustomize's hash suffix."""
    found = [doc for doc in docs if doc["kind"] == kind and base_name(doc["metadata"]["name"], name)]
    assert len(found) == 1, f"{kind}/{name}*: {len(found)} found"
    return found[0]


def base_name(rendered: str, name: str) -> bool:
    """Whether ``rendered`` is ``name``, or ``name`` with kustomize's ``-<10 characters>`` hash."""
    return rendered == name or (rendered.startswith(f"{name}-") and len(rendered) == len(name) + 11)


def workloads(docs: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """Each Deployment, StatefulSet and Job with its pod template."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc, doc["spec"]["template"]


def containers(pod_spec: Manifest) -> Iterator[tuple[str, Manifest]]:
    """Every container of a pod, init containers first, each with ``init`` or ``main``."""
    for container in pod_spec.get("initContainers", []):
        yield "init", container
    for container in pod_spec["containers"]:
        yield "main", container


def matches(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def pod_labels(workload: Manifest) -> dict[str, str]:
    """The labels of a workload's pods."""
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def workload_id(workload: Manifest) -> str:
    """``Kind/name`` for messages and test ids."""
    return f"{workload['kind']}/{workload['metadata']['name']}"
