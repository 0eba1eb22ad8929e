"""The published language as an AsyncAPI 3.0 document, and the rule that a published version never breaks.

``docs/asyncapi.json`` is generated from ``CONTRACTS`` (payloads), ``Envelope`` and the topology in
``streams`` (who sends, who receives) and committed, so a change to an event shows up in review.
Regenerating refuses to overwrite a published message with an incompatible shape. Compatibility has
to hold both ways: new consumers replay old events (consumers start at ``DeliverPolicy.ALL``) and
old consumers read new ones. So a payload version may only gain optional fields; anything else is a
new version, which gets a channel of its own.

``python -m devtools.asyncapi`` regenerates the document; ``--check`` fails when the committed
one is stale or the contracts broke a published version.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.metadata
import inspect
import itertools
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import msgspec.inspect as mi

from shared.events.contracts import CONTRACTS, Envelope, dataschema
from shared.events.streams import CONSUMERS, STREAMS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from shared.events.contracts import EventPayload
    from shared.events.streams import StreamSpec

__all__ = (
    "DOCUMENT_PATH",
    "breaking_changes",
    "build_document",
    "main",
    "render",
    "subject_matches",
)

DOCUMENT_PATH = Path("docs/asyncapi.json")
"""Where the committed document lives, relative to the repository root (the working directory of ``just``)."""

_SCHEMAS = "#/components/schemas/"
_ENVELOPE = "Envelope"
_HEADERS = "EventHeaders"

# Keywords that document a schema without constraining its values: changing them breaks no one.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
)
# Keywords holding subschemas: compared by walking into them, so a message names the field that changed.
_NESTED = frozenset(
    {"$ref", "properties", "required", "items", "additionalProperties", "prefixItems", "anyOf", "oneOf", "allOf"}
)

_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "NATS headers of every event message.",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "format": "uuid",
            "description": (
                "The envelope's `id`. JetStream drops a second publish with the same id within the stream's "
                "duplicate window, so the outbox relay retries safely."
            ),
        },
        "traceparent": {
            "type": "string",
            "description": (
                "W3C Trace Context of the relay's send span, a child of the request that wrote the event; "
                "present when tracing is on."
            ),
        },
        "tracestate": {
            "type": "string",
            "description": "W3C Trace Context vendor state, passed along with `traceparent` when there is any.",
        },
    },
    "required": ["Nats-Msg-Id"],
}

_DESCRIPTION = (
    "Events between the Relay Shop services. Each is a CloudEvents 1.0 structured JSON document published "
    "to JetStream on the subject equal to its `type`; `dataschema` names the payload's version. A published "
    "version never changes shape: consumers replay history and old consumers read new events, so a version "
    "may only gain optional fields. Any other change is a new version, with a channel of its own."
)


def build_document(contracts: Mapping[tuple[str, int], type[EventPayload]] | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every event: channels, messages, and who sends and receives them.

    Args:
        contracts: Payload structs by (event type, version); ``CONTRACTS`` when omitted.

    Returns:
        The document as JSON-ready data. Its meaning does not depend on key order; ``render`` sorts.

    Raises:
        ValueError: An event type that no stream takes, or two contracts whose schemas would share a name.
    """
    contracts = CONTRACTS if contracts is None else contracts
    keys = sorted(contracts)
    names, schemas = _schemas(contracts, keys)
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for (event_type, version), name in zip(keys, names, strict=True):
        channel_id = f"{event_type}.v{version}"
        channel_ref = f"#/channels/{channel_id}"
        message_refs = [{"$ref": f"{channel_ref}/messages/{name}"}]
        summary = schemas[name].get("description", f"{event_type} v{version}").split("\n", 1)[0]
        channels[channel_id] = {
            "address": event_type,
            "title": f"{event_type} v{version}",
            "summary": summary,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        messages[name] = _message(event_type, version, name, summary)
        stream = _stream_of(event_type)
        operations[f"{stream.owner}.send.{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": channel_ref},
            "messages": message_refs,
            "summary": f"{stream.owner} publishes {event_type} v{version} to stream {stream.name}.",
            "tags": [{"name": stream.owner}],
            "x-jetstream": {"stream": stream.name},
        }
        for consumer in CONSUMERS:
            # A filter only sees its own stream: the same subject in another stream never reaches it.
            if consumer.stream != stream.name:
                continue
            if not any(subject_matches(pattern, event_type) for pattern in consumer.filter_subjects):
                continue
            operations[f"{consumer.durable}.receive.{channel_id}"] = {
                "action": "receive",
                "channel": {"$ref": channel_ref},
                "messages": message_refs,
                "summary": f"{consumer.service} consumes {event_type} v{version} ({consumer.purpose}).",
                "tags": [{"name": consumer.service}],
                "x-jetstream": {"stream": consumer.stream, "durable": consumer.durable},
            }
    services = sorted({stream.owner for stream in STREAMS if stream.owner != "*"} | {c.service for c in CONSUMERS})
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Relay Shop events",
            "version": importlib.metadata.version("shared"),
            "description": _DESCRIPTION,
            "tags": [{"name": service, "description": f"The {service} service."} for service in services],
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "NATS with JetStream; every stream in `streams.STREAMS`.",
                "variables": {
                    "host": {
                        "default": "localhost:4222",
                        "description": "Each service gets its URL from `<SERVICE>_NATS_URL`.",
                    }
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render(document: Mapping[str, Any] | None = None) -> str:
    """The document as committed: JSON with sorted keys, so regenerating is byte-stable.

    Args:
        document: What to render; a freshly built document when omitted.

    Returns:
        Indented JSON ending in a newline.
    """
    document = build_document() if document is None else document
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a NATS subject filter matches a subject: ``*`` is one token, a final ``>`` one or more."""
    wanted = pattern.split(".")
    parts = subject.split(".")
    for index, want in enumerate(wanted):
        if want == ">":
            return index < len(parts)
        if index >= len(parts) or want not in {"*", parts[index]}:
            return False
    return len(wanted) == len(parts)


def breaking_changes(published: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What in ``current`` breaks a message that ``published`` documents.

    Every published (event type, version) must still exist, and every field of its payload (nested
    structs included) must keep its type, format, enum and other constraints. An optional field must
    not become required, and a new field must be optional: old events lack it. New fields that are
    optional, new versions and new event types break nothing. ``$ref`` is followed rather than compared
    by name, so renaming a struct that keeps its shape is not a change on the wire.

    Args:
        published: The committed document.
        current: The document built from the contracts as they are now.

    Returns:
        One line per break, e.g. ``users.user.registered v1: field 'email' removed``; empty when compatible.

    Raises:
        ValueError: A document that this module did not produce.
    """
    comparison = _ShapeComparison(_components(published, "schemas"), _components(current, "schemas"))
    changes: list[str] = []
    if _ENVELOPE in comparison.old_schemas:
        if _ENVELOPE in comparison.new_schemas:
            envelope = {"$ref": _SCHEMAS + _ENVELOPE}
            changes += [f"envelope: {change}" for change in comparison.changes(envelope, envelope)]
        else:
            changes.append("envelope: removed")
    current_messages = _messages(current)
    for key, payload in sorted(_messages(published).items()):
        where = f"{key[0]} v{key[1]}"
        if key not in current_messages:
            changes.append(f"{where}: removed")
            continue
        changes += [f"{where}: {change}" for change in comparison.changes(payload, current_messages[key])]
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the committed document, or check it (``--check``).

    Args:
        argv: Command-line arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns:
        The exit status: 1 when the document is stale (with ``--check``), unreadable, or the contracts
        break a published version; 0 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m devtools.asyncapi", description="Write or check the AsyncAPI document of the events."
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed document is stale or broken")
    parser.add_argument("--path", type=Path, default=DOCUMENT_PATH, help=f"the document (default: {DOCUMENT_PATH})")
    arguments = parser.parse_args(argv)
    path: Path = arguments.path
    document = build_document()
    text = render(document)
    committed = path.read_text(encoding="utf-8") if path.exists() else None
    if committed is None and arguments.check:
        print(f"{path} is missing: run `python -m devtools.asyncapi`", file=sys.stderr)
        return 1
    if committed is not None:
        try:
            changes = breaking_changes(json.loads(committed), document)
        except ValueError as error:
            print(f"{path} is not an AsyncAPI document written by this module: {error}", file=sys.stderr)
            return 1
        if changes:
            print(f"{path}: changes that break published events (make them a new version):", file=sys.stderr)
            for change in changes:
                print(f"  {change}", file=sys.stderr)
            return 1
        if committed == text:
            print(f"{path} is up to date")
            return 0
        if arguments.check:
            print(f"{path} is stale: run `python -m devtools.asyncapi`", file=sys.stderr)
            return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {path}")
    return 0


# building ------------------------------------------------------------------------------------


def _schemas(
    contracts: Mapping[tuple[str, int], type[EventPayload]], keys: list[tuple[str, int]]
) -> tuple[list[str], dict[str, Any]]:
    """JSON Schemas of the payloads, their nested structs, the envelope and the headers.

    Returns:
        The schema name of each payload in the order of ``keys`` (``UserRegisteredV1``), and every schema.
    """
    types: list[type[msgspec.Struct]] = [*(contracts[key] for key in keys), Envelope]
    refs, schemas = msgspec.json.schema_components(types, ref_template=_SCHEMAS + "{name}")
    docs = _field_docs(types)
    for schema in schemas.values():
        properties = schema.get("properties", {})
        for field, doc in docs.get(schema.get("title", ""), {}).items():
            if field in properties:
                properties[field].setdefault("description", doc)
    schemas[_ENVELOPE]["description"] = (
        "A CloudEvents 1.0 event in structured JSON mode; `data` is the payload that `type` and `dataschema` name."
    )
    renamed: dict[str, str] = {}  # msgspec's name of each payload schema -> ours
    for (event_type, version), ref in zip(keys, refs[: len(keys)], strict=True):
        current = ref["$ref"].removeprefix(_SCHEMAS)
        # A v2 struct may already be called ``UserRegisteredV2``; don't make it ``UserRegisteredV2V2``.
        name = re.sub(r"V\d+$", "", contracts[event_type, version].__name__) + f"V{version}"
        taken = name in renamed.values() or (name in schemas and name != current) or name == _HEADERS
        if current in renamed or taken:
            raise ValueError(f"{event_type} v{version}: schema name {name!r} is taken; rename the struct")
        renamed[current] = name
    schemas = {renamed.get(name, name): schema for name, schema in schemas.items()}
    schemas = _rewrite_refs(schemas, {_SCHEMAS + old: _SCHEMAS + new for old, new in renamed.items()})
    schemas[_HEADERS] = copy.deepcopy(_HEADERS_SCHEMA)
    return list(renamed.values()), schemas


def _rewrite_refs(node: Any, refs: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: refs.get(value, value) if key == "$ref" else _rewrite_refs(value, refs) for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item, refs) for item in node]
    return node


def _field_docs(types: Iterable[type[msgspec.Struct]]) -> dict[str, dict[str, str]]:
    """Attribute docstrings of every reachable struct, by schema title, then by encoded field name.

    msgspec leaves them out of the schema, yet they carry meaning (units, formats) consumers need.
    A title that two structs share is skipped: its docs could land on the wrong schema.
    """
    structs: dict[type, mi.StructType] = {}
    seen: set[int] = set()

    def collect(node: object) -> None:
        if isinstance(node, tuple):
            for item in node:
                collect(item)
        elif isinstance(node, mi.Field):
            collect(node.type)
        elif isinstance(node, mi.Type) and id(node) not in seen:
            seen.add(id(node))
            if isinstance(node, mi.StructType):
                structs.setdefault(node.cls, node)
            for name in node.__struct_fields__:
                collect(getattr(node, name))

    collect(mi.multi_type_info(list(types)))
    by_title: dict[str, list[mi.StructType]] = {}
    for struct in structs.values():
        by_title.setdefault(struct.cls.__name__, []).append(struct)
    docs: dict[str, dict[str, str]] = {}
    for title, (struct, *others) in by_title.items():
        if not others:
            by_name = _attribute_docstrings(struct.cls)
            docs[title] = {field.encode_name: by_name[field.name] for field in struct.fields if field.name in by_name}
    return docs


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated attribute of ``cls`` and its Struct bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        if not issubclass(klass, msgspec.Struct) or klass is msgspec.Struct:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue  # no source (installed without it, or built at run time): no field docs
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _message(event_type: str, version: int, name: str, summary: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": f"{event_type} v{version}",
        "summary": summary,
        "contentType": "application/cloudevents+json",
        "headers": {"$ref": _SCHEMAS + _HEADERS},
        "payload": {
            "allOf": [
                {"$ref": _SCHEMAS + _ENVELOPE},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": event_type},
                        "dataschema": {"const": dataschema(event_type, version)},
                        "data": {"$ref": _SCHEMAS + name},
                    },
                },
            ]
        },
        "x-event-type": event_type,
        "x-event-version": version,
    }


def _stream_of(event_type: str) -> StreamSpec:
    for stream in STREAMS:
        if any(subject_matches(pattern, event_type) for pattern in stream.subjects):
            return stream
    raise ValueError(f"no stream takes subject {event_type!r}: publishing it would fail")


# comparing -----------------------------------------------------------------------------------


def _components(document: Mapping[str, Any], kind: str) -> dict[str, Any]:
    components = document.get("components", {}).get(kind, {})
    if not isinstance(components, dict):
        raise ValueError(f"components.{kind} is not an object")
    return components


def _messages(document: Mapping[str, Any]) -> dict[tuple[str, int], Any]:
    """Each message's payload (``data``) schema, by event type and version."""
    found: dict[tuple[str, int], Any] = {}
    for message_id, message in _components(document, "messages").items():
        try:
            key = (message["x-event-type"], message["x-event-version"])
            parts = [message["payload"], *message["payload"].get("allOf", [])]
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"message {message_id!r} names no event type, version and payload") from error
        data = [part["properties"]["data"] for part in parts if "data" in part.get("properties", {})]
        if not data:
            raise ValueError(f"message {message_id!r} has no data schema")
        found[key] = data[-1]
    return found


@dataclass(frozen=True)
class _ShapeComparison:
    """Compares schemas of one document with those of another, following ``$ref`` on each side."""

    old_schemas: dict[str, Any]
    new_schemas: dict[str, Any]

    def changes(
        self, old: Any, new: Any, path: str = "", ancestors: frozenset[tuple[str, str]] = frozenset()
    ) -> list[str]:
        old, old_ref = _resolve(old, self.old_schemas)
        new, new_ref = _resolve(new, self.new_schemas)
        if old_ref is not None and new_ref is not None:
            if (old_ref, new_ref) in ancestors:
                return []  # a recursive struct: this pair is being compared further up
            ancestors |= {(old_ref, new_ref)}
        subject = f"field {path!r}" if path else "payload"
        changes = [
            f"{subject} changed {keyword} from {_show(old.get(keyword))} to {_show(new.get(keyword))}"
            for keyword in sorted((old.keys() | new.keys()) - _ANNOTATIONS - _NESTED)
            if old.get(keyword) != new.get(keyword)
        ]
        changes += self._property_changes(old, new, path, ancestors)
        for keyword, suffix in (("items", "[]"), ("additionalProperties", "{}")):
            old_items, new_items = old.get(keyword), new.get(keyword)
            if isinstance(old_items, dict) and isinstance(new_items, dict):
                changes += self.changes(old_items, new_items, path + suffix, ancestors)
            elif old_items != new_items:
                changes.append(f"{subject} changed {keyword} from {_show(old_items)} to {_show(new_items)}")
        for keyword in ("prefixItems", "anyOf", "oneOf", "allOf"):
            old_parts, new_parts = old.get(keyword, []), new.get(keyword, [])
            if len(old_parts) != len(new_parts):
                changes.append(f"{subject} changed {keyword} from {_show(old_parts)} to {_show(new_parts)}")
                continue
            for old_part, new_part in zip(old_parts, new_parts, strict=True):
                changes += self.changes(old_part, new_part, path, ancestors)
        return changes

    def _property_changes(
        self, old: dict[str, Any], new: dict[str, Any], path: str, ancestors: frozenset[tuple[str, str]]
    ) -> list[str]:
        old_properties, new_properties = old.get("properties", {}), new.get("properties", {})
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        changes: list[str] = []
        for name, schema in old_properties.items():
            field = f"{path}.{name}" if path else name
            if name not in new_properties:
                changes.append(f"field {field!r} removed")
                continue
            if name in new_required and name not in old_required:
                changes.append(f"field {field!r} became required")
            changes += self.changes(schema, new_properties[name], field, ancestors)
        for name in sorted(new_properties.keys() - old_properties.keys()):
            if name in new_required:
                field = f"{path}.{name}" if path else name
                changes.append(f"new field {field!r} is required (events published before lack it)")
        return changes


def _resolve(schema: Any, schemas: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The schema a ``$ref`` points at (with the referring schema's own keywords on top), and its name."""
    if not isinstance(schema, dict):
        raise ValueError(f"not a schema: {schema!r}")
    name = None
    while "$ref" in schema:
        ref = schema["$ref"]
        name = ref.removeprefix(_SCHEMAS)
        if not ref.startswith(_SCHEMAS) or name not in schemas:
            raise ValueError(f"unknown schema reference {ref!r}")
        schema = {**schemas[name], **{key: value for key, value in schema.items() if key != "$ref"}}
    return schema, name


def _show(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
