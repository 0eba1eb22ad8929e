"""Both overlays render, validate against the Kubernetes API schemas, and hang together."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

# kubernetes-validate ships the API's JSON schemas for every minor version, offline; it has no
# type information of its own.
import kubernetes_validate  # type: ignore[import-untyped]  # no py.typed marker
import msgspec
import pytest
import yaml

from devtools.stack.supervisor import installed_services
from notify.settings import NotifySettings
from orders.settings import OrdersSettings
from shared.auth import AccessTokenSigner
from shared.settings import ServiceSettings
from shared.telemetry import tracing_plan
from tests.deploy.custom_resources import CUSTOM_SCHEMAS
from tests.deploy.dockerfile import image_steps
from tests.deploy.manifests import (
    K8S,
    NAMESPACES,
    OVERLAYS,
    ROOT,
    SERVICES,
    Manifest,
    containers,
    generated,
    matches,
    named,
    pod_labels,
    render,
    workload_id,
    workloads,
)
from users.settings import UsersSettings

# The oldest and the newest Kubernetes minor versions the manifests must be valid for: 1.33
# (still offered by the managed services) and the newest schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.33", "1.37")

# Custom resources have no schema in kubernetes-validate. Each is skipped by name, with why.
SKIPPED_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): (
        "CloudNativePG's CRD schema is ~390 KB of generated YAML, shipped by no package we can pin; "
        "test_cloudnativepg_cluster_has_three_instances_and_a_role_per_service checks the fields we rely on"
    ),
} | dict.fromkeys(
    CUSTOM_SCHEMAS,
    "no registry package carries this CRD's schema: tests/deploy/test_custom_resources.py validates it "
    "strictly against tests/deploy/custom_resources.py, written from the CRD",
)

SETTINGS: dict[str, type[ServiceSettings]] = {
    "users": UsersSettings,
    "orders": OrdersSettings,
    "notify": NotifySettings,
}
OTEL_VARIABLES = {
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}

# What prod refers to and never commits: created by the operator (deploy/README.md).
PROD_CREATED_OUT_OF_BAND = {("Secret", f"{service}-{kind}") for service in SERVICES for kind in ("db", "nats")} | {
    ("Secret", "users-app"),
    ("Secret", "notify-app"),
    ("ConfigMap", "users-jwt-public-key"),
    ("Secret", "postgres-backup-s3"),
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str) -> list[Manifest]:
    return render(overlay)


def test_every_object_lands_in_the_overlays_namespace(overlay: str, docs: list[Manifest]) -> None:
    namespace = NAMESPACES[overlay]
    assert named(docs, "Namespace", namespace)
    misplaced = [
        f"{doc['kind']}/{doc['metadata']['name']}"
        for doc in docs
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != namespace
    ]
    assert not misplaced


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(docs: list[Manifest], version: str) -> None:
    failures, skipped = [], []
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in SKIPPED_SCHEMAS:
            skipped.append(key)
            continue
        try:
            # strict: a misspelt or misplaced field is an error, not silently ignored.
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")
        except kubernetes_validate.SchemaNotFoundError as error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)
    assert set(skipped) <= set(SKIPPED_SCHEMAS)


def test_every_service_has_its_whole_set_of_objects(docs: list[Manifest]) -> None:
    for service in SERVICES:
        assert named(docs, "ServiceAccount", service)["automountServiceAccountToken"] is False
        generated(docs, "ConfigMap", f"{service}-config")
        assert named(docs, "Job", f"{service}-migrate")
        for component in ("api", "worker"):
            assert named(docs, "Deployment", f"{service}-{component}")
            assert named(docs, "PodDisruptionBudget", f"{service}-{component}")
        for component in ("api", "worker", "migrate"):
            assert named(docs, "NetworkPolicy", f"{service}-{component}")
        assert named(docs, "Service", f"{service}-api")
        hpa = named(docs, "HorizontalPodAutoscaler", f"{service}-api")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{service}-api",
        }
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        # The HPA owns the API's replica count; the worker's is fixed.
        assert "replicas" not in named(docs, "Deployment", f"{service}-api")["spec"]
        assert named(docs, "Deployment", f"{service}-worker")["spec"]["replicas"] >= 1


Reference = tuple[str, str, bool]
"""(kind, name, optional) of a ConfigMap or Secret that a pod or custom resource needs."""


def _ref(kind: str, source: Manifest, name_key: str = "name") -> Reference:
    return (kind, source[name_key], source.get("optional", False))


def _volume_references(pod_spec: Manifest) -> set[Reference]:
    found: set[Reference] = set()
    for volume in pod_spec.get("volumes", []):
        if "configMap" in volume:
            found.add(_ref("ConfigMap", volume["configMap"]))
        if "secret" in volume:
            found.add(_ref("Secret", volume["secret"], "secretName"))
        sources = volume.get("projected", {}).get("sources", [])
        found |= {_ref(kind, source[key]) for source in sources for kind, key in _KINDS if key in source}
    return found


_KINDS = (("ConfigMap", "configMap"), ("Secret", "secret"))
_ENV_FROM = (("ConfigMap", "configMapRef"), ("Secret", "secretRef"))
_VALUE_FROM = (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef"))


def _references(pod_spec: Manifest) -> set[Reference]:
    """Every ConfigMap and Secret a pod needs: volumes, envFrom, env."""
    found = _volume_references(pod_spec)
    for _, container in containers(pod_spec):
        for source in container.get("envFrom", []):
            found |= {_ref(kind, source[key]) for kind, key in _ENV_FROM if key in source}
        for variable in container.get("env", []):
            value_from = variable.get("valueFrom", {})
            found |= {_ref(kind, value_from[key]) for kind, key in _VALUE_FROM if key in value_from}
    return found


def _cluster_references(docs: list[Manifest]) -> set[Reference]:
    found: set[Reference] = set()
    for doc in docs:
        if doc["kind"] == "Cluster":
            for role in doc["spec"]["managed"]["roles"]:
                found.add(("Secret", role["passwordSecret"]["name"], False))
            for ref in doc["spec"]["bootstrap"]["initdb"]["postInitApplicationSQLRefs"]["configMapRefs"]:
                found.add(("ConfigMap", ref["name"], False))
        if doc["kind"] == "ObjectStore":
            for credential in doc["spec"]["configuration"].get("s3Credentials", {}).values():
                if isinstance(credential, dict):
                    found.add(("Secret", credential["name"], False))
    return found


def test_every_referenced_configmap_and_secret_exists_or_is_created_by_the_operator(
    overlay: str, docs: list[Manifest]
) -> None:
    present = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    wanted = _cluster_references(docs)
    for workload, template in workloads(docs):
        wanted |= _references(template["spec"])
        account = template["spec"].get("serviceAccountName")
        if account:
            assert ("ServiceAccount", account) in present, workload_id(workload)
    missing = {(kind, name) for kind, name, optional in wanted if not optional and (kind, name) not in present}
    if overlay == "dev":
        assert not missing  # `kubectl apply -k overlays/dev` needs nothing prepared
    else:
        assert missing == PROD_CREATED_OUT_OF_BAND


def test_the_deploy_readme_creates_everything_prod_expects() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    created = set(re.findall(r"create secret generic ([a-z0-9-]+)", readme))
    created |= set(re.findall(r"create configmap ([a-z0-9-]+)", readme))
    assert {name for _, name in PROD_CREATED_OUT_OF_BAND} <= created


def test_services_pdbs_and_policies_select_existing_pods(docs: list[Manifest]) -> None:
    pods = [pod_labels(workload) for workload, _ in workloads(docs)]
    # CloudNativePG's instance pods: the operator's cnpg.io/cluster label and the inherited ones.
    pods += [
        {"cnpg.io/cluster": doc["metadata"]["name"], **doc["spec"]["inheritedMetadata"]["labels"]}
        for doc in docs
        if doc["kind"] == "Cluster"
    ]
    # cert-manager's ACME HTTP-01 solver pods, started for a challenge next to the Certificate.
    pods += [{"acme.cert-manager.io/http01-solver": "true"} for doc in docs if doc["kind"] == "Certificate"]
    for doc in docs:
        if doc["kind"] == "Service":
            selector = {"matchLabels": doc["spec"]["selector"]}
        elif doc["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = doc["spec"]["selector" if doc["kind"] == "PodDisruptionBudget" else "podSelector"]
        else:
            continue
        assert any(matches(selector, labels) for labels in pods), f"{doc['kind']}/{doc['metadata']['name']}"


def test_services_and_probes_use_ports_their_containers_declare(docs: list[Manifest]) -> None:
    for workload, template in workloads(docs):
        declared = {port["name"] for _, c in containers(template["spec"]) for port in c.get("ports", [])}
        declared |= {port["containerPort"] for _, c in containers(template["spec"]) for port in c.get("ports", [])}
        for _, container in containers(template["spec"]):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                check = container.get(probe, {})
                port = check.get("httpGet", check.get("tcpSocket", {})).get("port")
                assert port is None or port in declared, f"{workload_id(workload)} {probe} port {port}"
    for service in (doc for doc in docs if doc["kind"] == "Service"):
        selected = [
            t for w, t in workloads(docs) if matches({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
        ]
        names = {port["name"] for t in selected for _, c in containers(t["spec"]) for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service/{service['metadata']['name']} {port['targetPort']}"


def test_the_apps_wait_for_their_migration_and_the_job_runs_it(docs: list[Manifest]) -> None:
    for service in SERVICES:
        job = named(docs, "Job", f"{service}-migrate")["spec"]["template"]["spec"]
        assert job["containers"][0]["args"] == ["migrate"]
        assert job["restartPolicy"] == "Never"
        for component in ("api", "worker"):
            pod = named(docs, "Deployment", f"{service}-{component}")["spec"]["template"]["spec"]
            (wait,) = pod["initContainers"]
            assert wait["image"] == pod["containers"][0]["image"] == job["containers"][0]["image"]
            assert wait["command"][:3] == ["python", "/opt/relay/wait_for_migrations.py", service]
            assert pod["containers"][0]["args"][0] == component


def _kill_timeout(args: list[str]) -> int:
    return int(args[args.index("--kill-timeout") + 1])


def test_api_pods_get_more_grace_than_granian_needs_to_stop(docs: list[Manifest]) -> None:
    for service in SERVICES:
        pod = named(docs, "Deployment", f"{service}-api")["spec"]["template"]["spec"]
        (api,) = pod["containers"]
        pre_stop = api["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pre_stop + _kill_timeout(api["args"])


def test_the_image_default_command_stops_within_the_same_kill_timeout(docs: list[Manifest]) -> None:
    for service in SERVICES:
        (cmd,) = [step.arguments for step in image_steps(service) if step.keyword == "CMD"]
        api = named(docs, "Deployment", f"{service}-api")["spec"]["template"]["spec"]["containers"][0]
        assert msgspec.json.decode(cmd) == api["args"]


def _file_settings(container: Manifest, docs: list[Manifest]) -> dict[str, str]:
    """Every ``*_FILE`` setting a container gets (from its ConfigMaps and its own env)."""
    found: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config = [
                d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["configMapRef"]["name"]
            ]
            for config_map in config:
                found |= {k: v for k, v in config_map["data"].items() if k.endswith("_FILE")}
    found |= {v["name"]: v["value"] for v in container.get("env", []) if v["name"].endswith("_FILE")}
    return found


def _mounted_files(container: Manifest, pod_spec: Manifest, docs: list[Manifest]) -> set[str]:
    """The files a container's volumes put in place (``<dir>/*`` for a Secret not in the render)."""
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    files: set[str] = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})  # absent: a StatefulSet's volumeClaimTemplate
        source = volume.get("secret") or volume.get("configMap")
        if source is None:
            continue
        if "items" in source:
            files |= {str(PurePosixPath(mount["mountPath"]) / item["path"]) for item in source["items"]}
            continue
        kind, name = ("Secret", source["secretName"]) if "secret" in volume else ("ConfigMap", source["name"])
        objects = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
        if not objects:  # created outside the overlay (prod): its keys are unknown here
            files.add(mount["mountPath"] + "/*")
            continue
        keys = set(objects[0].get("data", {})) | set(objects[0].get("stringData", {}))
        files |= {str(PurePosixPath(mount["mountPath"]) / key) for key in keys}
    return files


def test_every_secret_file_a_setting_names_is_mounted_in_that_container(docs: list[Manifest]) -> None:
    # A *_FILE setting whose file is missing stops the service at start (shared.settings).
    for workload, template in workloads(docs):
        for _, container in containers(template["spec"]):
            mounted = _mounted_files(container, template["spec"], docs)
            for name, path in _file_settings(container, docs).items():
                directory = str(PurePosixPath(path).parent) + "/*"
                assert path in mounted or directory in mounted, f"{workload_id(workload)} {container['name']}: {name}"


def test_every_service_variable_is_a_setting_of_that_service(docs: list[Manifest]) -> None:
    for service, settings in SETTINGS.items():
        prefix = f"{service.upper()}_"
        fields = {field.name for field in msgspec.structs.fields(settings)}
        names = set(generated(docs, "ConfigMap", f"{service}-config")["data"])
        for component in ("api", "worker"):
            pod = named(docs, "Deployment", f"{service}-{component}")["spec"]["template"]["spec"]
            names |= {variable["name"] for _, c in containers(pod) for variable in c.get("env", [])}
        for name in names - OTEL_VARIABLES:
            assert name.startswith(prefix), name
            field = name.removeprefix(prefix).removesuffix("_FILE").lower()
            assert field in fields, f"{name} is no setting of {service}"


def test_every_service_listens_on_every_interface_in_its_pod(docs: list[Manifest]) -> None:
    for service in SERVICES:
        config = generated(docs, "ConfigMap", f"{service}-config")["data"]
        prefix = service.upper()
        assert config[f"{prefix}_HTTP_HOST"] == config[f"{prefix}_WORKER_HEALTH_HOST"] == "0.0.0.0"  # noqa: S104
        assert config[f"{prefix}_HTTP_PORT"] == "8000"
        assert config[f"{prefix}_WORKER_HEALTH_PORT"] == "9000"
        assert config["OTEL_SERVICE_NAME"] == service
        assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def test_prod_samples_a_tenth_of_new_traces_and_follows_the_parent_in_every_process() -> None:
    # The api and the worker of each service read one ConfigMap: the same decision on both sides of
    # NATS, so a trace is kept or dropped whole. tracing_plan is what the processes run: no warning
    # means every value is understood, not silently replaced by the default.
    docs = render("prod")
    for service in SERVICES:
        config = generated(docs, "ConfigMap", f"{service}-config")["data"]
        for component in ("api", "worker"):
            pod = named(docs, "Deployment", f"{service}-{component}")["spec"]["template"]["spec"]
            sources = [source for _, c in containers(pod) for source in c.get("envFrom", [])]
            assert any(source.get("configMapRef", {}).get("name") == config_name(docs, service) for source in sources)
        plan = tracing_plan(service, config)
        assert plan.warnings == ()
        assert (plan.sampler, plan.sampler_ratio) == ("parentbased_traceidratio", 0.1)
        assert plan.exporters == ("otlp",)


def config_name(docs: list[Manifest], service: str) -> str:
    return str(generated(docs, "ConfigMap", f"{service}-config")["metadata"]["name"])


def test_prod_runs_three_nats_peers_and_asks_for_three_stream_replicas() -> None:
    docs = render("prod")
    assert named(docs, "StatefulSet", "nats")["spec"]["replicas"] == 3
    conf = generated(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    for peer in range(3):
        assert f"nats://nats-{peer}.nats-headless:6222" in conf
    for service in SERVICES:
        assert (
            generated(docs, "ConfigMap", f"{service}-config")["data"][f"{service.upper()}_EVENTS_STREAM_REPLICAS"]
            == "3"
        )
    dev = render("dev")
    assert named(dev, "StatefulSet", "nats")["spec"]["replicas"] == 1
    assert not re.search(r"^cluster\s*\{", generated(dev, "ConfigMap", "nats-config")["data"]["nats.conf"], re.M)


def test_cloudnativepg_cluster_has_three_instances_and_a_role_per_service() -> None:
    docs = render("prod")
    spec: dict[str, Any] = named(docs, "Cluster", "postgres")["spec"]
    assert spec["instances"] == 3
    assert re.fullmatch(r"ghcr\.io/cloudnative-pg/postgresql:16\.\d+", spec["imageName"])
    roles = {role["name"]: role for role in spec["managed"]["roles"]}
    assert set(roles) == set(SERVICES)
    for service, role in roles.items():
        assert role == {
            "name": service,
            "ensure": "present",
            "login": True,
            "passwordSecret": {"name": f"{service}-db"},
        }
    assert spec["bootstrap"]["initdb"]["database"] == "relay"
    (ref,) = spec["bootstrap"]["initdb"]["postInitApplicationSQLRefs"]["configMapRefs"]
    assert ref["key"] in named(docs, "ConfigMap", ref["name"])["data"]
    # The services' policies find Postgres by this label in both flavours.
    assert spec["inheritedMetadata"]["labels"]["app.kubernetes.io/name"] == "postgres"


def test_both_flavours_of_postgres_answer_at_postgres_rw() -> None:
    dev = render("dev")
    assert named(dev, "Service", "postgres-rw")["spec"]["selector"] == {"app.kubernetes.io/name": "postgres"}
    # CloudNativePG names its read-write Service <cluster>-rw.
    assert named(render("prod"), "Cluster", "postgres")
    secret = generated(dev, "Secret", "users-db")
    assert secret["type"] == "kubernetes.io/basic-auth"


def test_the_schema_sql_provisions_exactly_the_stack_services() -> None:
    sql = (K8S / "base" / "postgres" / "schemas.sql").read_text()
    (listed,) = re.findall(r"ARRAY\[([^\]]*)\]", sql)
    assert tuple(name.strip(" '") for name in listed.split(",")) == installed_services() == SERVICES


def test_dev_public_key_is_the_half_of_the_dev_signing_key() -> None:
    dev_only = K8S / "overlays" / "dev" / "dev-only"
    signer = AccessTokenSigner(
        (dev_only / "users-jwt-private.pem").read_text(), issuer="users", audiences=["users"], ttl_seconds=1
    )
    assert signer.public_key_pem() == (dev_only / "users-jwt-public.pem").read_text()


def test_dev_secrets_are_marked_dev_only() -> None:
    secrets = [doc for doc in render("dev") if doc["kind"] == "Secret"]
    assert secrets
    assert all(doc["metadata"]["labels"]["relay-shop/dev-only"] == "true" for doc in secrets)
    assert not [doc for doc in render("prod") if doc["kind"] == "Secret"]


def test_collector_config_is_valid_yaml_and_exports_traces(docs: list[Manifest]) -> None:
    config = yaml.safe_load(generated(docs, "ConfigMap", "otel-collector-config")["data"]["config.yaml"])
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(pipeline["exporters"]) <= set(config["exporters"])
    assert any(name.startswith("otlp") for name in pipeline["exporters"])
