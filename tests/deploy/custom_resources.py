"""Strict schemas of the custom resources the prod overlay uses, for the fields it may use.

No package a registry carries ships these CRDs' schemas as JSON (kubernetes-validate has the core
API only; the npm ``@kubernetes-models/*`` packages ship compiled validators, and the PyPI
``cloudcoil-models-*`` packages pydantic classes on a framework we do not use). So each schema
here is written from the CRD at the version named, holding the fields of that CRD that these
manifests use or may reasonably use, with the CRD's types, enums and patterns. Everything else is
refused (``additionalProperties: false`` throughout, as kubernetes-validate's strict mode does): a
misspelt or misplaced field fails the test instead of being pruned silently by the API server.
"""

from __future__ import annotations

from typing import Any

__all__ = ("CUSTOM_SCHEMAS", "strict")

Schema = dict[str, Any]

# Prometheus' duration format, as the Prometheus Operator's CRDs check it.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"

STRING: Schema = {"type": "string"}
STRINGS: Schema = {"type": "array", "items": STRING}
STRING_MAP: Schema = {"type": "object", "additionalProperties": STRING}
METADATA: Schema = {
    "type": "object",
    "properties": {"name": STRING, "namespace": STRING, "labels": STRING_MAP, "annotations": STRING_MAP},
    "required": ["name"],
}
SECRET_KEY: Schema = {"type": "object", "properties": {"name": STRING, "key": STRING}, "required": ["name", "key"]}
LABEL_SELECTOR: Schema = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": STRING,
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": STRINGS,
                },
                "required": ["key", "operator"],
            },
        },
    },
}


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    schema: Schema = strict(
        {
            "type": "object",
            "properties": {
                "apiVersion": {"const": api_version},
                "kind": {"const": kind},
                "metadata": METADATA,
                "spec": spec,
            },
            "required": ["apiVersion", "kind", "metadata", "spec"],
        }
    )
    return schema


# monitoring.coreos.com_prometheusrules.yaml, Prometheus Operator 0.82.
_RULE: Schema = {
    "type": "object",
    "properties": {
        "alert": STRING,
        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "for": {"type": "string", "pattern": DURATION},
        "keep_firing_for": {"type": "string", "minLength": 1, "pattern": DURATION},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "required": ["expr"],
    # "Only one of record and alert must be set."
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": DURATION},
                        "query_offset": {"type": "string", "pattern": DURATION},
                        "limit": {"type": "integer"},
                        "labels": STRING_MAP,
                        "rules": {"type": "array", "items": _RULE},
                    },
                    "required": ["name"],
                },
            }
        },
    },
)

# monitoring.coreos.com_podmonitors.yaml, Prometheus Operator 0.82.
_RELABELING: Schema = {
    "type": "object",
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": LABEL_NAME}},
        "separator": STRING,
        "targetLabel": STRING,
        "regex": STRING,
        "replacement": STRING,
        "modulus": {"type": "integer"},
        "action": {
            "enum": [
                *("replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep"),
                *("lowercase", "uppercase", "keepequal", "dropequal"),
            ]
        },
    },
}
POD_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    {
        "type": "object",
        "properties": {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": {"type": "object", "properties": {"any": {"type": "boolean"}, "matchNames": STRINGS}},
            "jobLabel": STRING,
            "podTargetLabels": STRINGS,
            "podMetricsEndpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "port": STRING,
                        "path": STRING,
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": _RELABELING},
                        "metricRelabelings": {"type": "array", "items": _RELABELING},
                    },
                },
            },
        },
        "required": ["selector"],
    },
)

# cert-manager.io_certificates.yaml, cert-manager 1.17.
CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    {
        "type": "object",
        "properties": {
            "secretName": STRING,
            "commonName": STRING,
            "dnsNames": STRINGS,
            "duration": STRING,
            "renewBefore": STRING,
            "usages": STRINGS,
            "revisionHistoryLimit": {"type": "integer"},
            "secretTemplate": {"type": "object", "properties": {"annotations": STRING_MAP, "labels": STRING_MAP}},
            "issuerRef": {
                "type": "object",
                "properties": {"name": STRING, "kind": STRING, "group": STRING},
                "required": ["name"],
            },
            "privateKey": {
                "type": "object",
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                    "size": {"type": "integer"},
                },
            },
        },
        "required": ["issuerRef", "secretName"],
    },
)

# postgresql.cnpg.io_scheduledbackups.yaml, CloudNativePG 1.27.
SCHEDULED_BACKUP = _resource(
    "postgresql.cnpg.io/v1",
    "ScheduledBackup",
    {
        "type": "object",
        "properties": {
            "schedule": STRING,
            "cluster": {"type": "object", "properties": {"name": STRING}, "required": ["name"]},
            "immediate": {"type": "boolean"},
            "suspend": {"type": "boolean"},
            "backupOwnerReference": {"enum": ["none", "self", "cluster"]},
            "method": {"enum": ["barmanObjectStore", "volumeSnapshot", "plugin"]},
            "target": {"enum": ["primary", "prefer-standby"]},
            "online": {"type": "boolean"},
            "pluginConfiguration": {
                "type": "object",
                "properties": {"name": STRING, "parameters": STRING_MAP},
                "required": ["name"],
            },
        },
        "required": ["cluster", "schedule"],
    },
)

# barmancloud.cnpg.io_objectstores.yaml, Barman Cloud Plugin 0.5+; spec.configuration is
# barman-cloud's BarmanObjectStoreConfiguration (the in-tree barmanObjectStore's shape).
_COMPRESSION: Schema = {"enum": ["bzip2", "gzip", "lz4", "snappy", "xz", "zstd"]}
OBJECT_STORE = _resource(
    "barmancloud.cnpg.io/v1",
    "ObjectStore",
    {
        "type": "object",
        "properties": {
            "retentionPolicy": {"type": "string", "pattern": r"^[1-9][0-9]*[dwm]$"},
            "configuration": {
                "type": "object",
                "properties": {
                    "destinationPath": {"type": "string", "minLength": 1},
                    "endpointURL": STRING,
                    "endpointCA": SECRET_KEY,
                    "s3Credentials": {
                        "type": "object",
                        "properties": {
                            "accessKeyId": SECRET_KEY,
                            "secretAccessKey": SECRET_KEY,
                            "region": SECRET_KEY,
                            "sessionToken": SECRET_KEY,
                            "inheritFromIAMRole": {"type": "boolean"},
                        },
                    },
                    "wal": {
                        "type": "object",
                        "properties": {
                            "compression": _COMPRESSION,
                            "encryption": {"enum": ["AES256", "aws:kms"]},
                            "maxParallel": {"type": "integer", "minimum": 1},
                        },
                    },
                    "data": {
                        "type": "object",
                        "properties": {
                            "compression": _COMPRESSION,
                            "encryption": {"enum": ["AES256", "aws:kms"]},
                            "jobs": {"type": "integer", "minimum": 1},
                            "immediateCheckpoint": {"type": "boolean"},
                        },
                    },
                    "tags": STRING_MAP,
                    "historyTags": STRING_MAP,
                },
                "required": ["destinationPath"],
            },
        },
        "required": ["configuration"],
    },
)

CUSTOM_SCHEMAS: dict[tuple[str, str], Schema] = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): SCHEDULED_BACKUP,
    ("barmancloud.cnpg.io/v1", "ObjectStore"): OBJECT_STORE,
}
"""The schema of each custom resource kind the overlays may hold, besides CloudNativePG's Cluster."""
