from __future__ import annotations

import copy
import datetime
import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest

from devtools.asyncapi import breaking_changes, build_document, main, render, subject_matches
from shared.events.contracts import CONTRACTS, EventPayload
from shared.events.streams import CONSUMERS

COMMITTED = Path(__file__).parents[3] / "docs" / "asyncapi.json"
REGISTERED = ("users.user.registered", 1)
PLACED = ("orders.order.placed", 1)


# Variants of published contracts. They live at module level because msgspec resolves the
# (postponed) annotations of a struct in its module's namespace. Each keeps v1's optional fields.

Instant = Annotated[datetime.datetime, msgspec.Meta(tz=True)]


class WithoutEmail(EventPayload, frozen=True, kw_only=True):
    user_id: uuid.UUID
    display_name: str
    role: Literal["user", "admin"]
    tokens_valid_after: Instant | None = None


class EmailAsNumber(EventPayload, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: int
    display_name: str
    role: Literal["user", "admin"]
    tokens_valid_after: Instant | None = None


class WithOwnerRole(EventPayload, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Literal["user", "admin", "owner"]
    tokens_valid_after: Instant | None = None


class WithRequiredLocale(EventPayload, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Literal["user", "admin"]
    locale: str
    tokens_valid_after: Instant | None = None


class WithOptionalLocale(EventPayload, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Literal["user", "admin"]
    locale: str = "en"
    tokens_valid_after: Instant | None = None


class AccountRegistered(EventPayload, frozen=True, kw_only=True):
    """The same shape as UserRegistered v1 under another class name."""

    user_id: uuid.UUID
    email: str
    display_name: str
    role: Literal["user", "admin"]
    tokens_valid_after: Instant | None = None


class UserRegisteredV2(EventPayload, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    name: str
    roles: list[str]


class UserRenamed(EventPayload, frozen=True, kw_only=True):
    user_id: uuid.UUID
    display_name: str


class LineWithoutSku(msgspec.Struct, frozen=True, kw_only=True):
    product_id: uuid.UUID
    name: str
    quantity: int
    unit_price: int


class PlacedWithoutSku(EventPayload, frozen=True, kw_only=True):
    order_id: uuid.UUID
    user_id: uuid.UUID
    lines: list[LineWithoutSku]
    total: int
    currency: str


def document_with(changes: dict[tuple[str, int], type[EventPayload]]) -> dict[str, Any]:
    """The document of the real contracts with some replaced or added (the registry stays untouched)."""
    return build_document({**CONTRACTS, **changes})


def receivers(document: dict[str, Any], channel_id: str, action: str) -> set[str]:
    return {
        operation_id.split(f".{action}.", 1)[0]
        for operation_id, operation in document["operations"].items()
        if operation["action"] == action and operation["channel"]["$ref"] == f"#/channels/{channel_id}"
    }


# the committed document ----------------------------------------------------------------------


def test_committed_document_is_what_the_contracts_render_now() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render(), "stale: run `python -m devtools.asyncapi`"


def test_rendering_does_not_depend_on_registration_order() -> None:
    assert render(build_document(dict(reversed(CONTRACTS.items())))) == render()


# what the document says ----------------------------------------------------------------------


def test_every_contract_has_a_channel_on_its_subject_with_its_payload_schema() -> None:
    document = build_document()
    for (event_type, version), payload_type in CONTRACTS.items():
        channel = document["channels"][f"{event_type}.v{version}"]
        assert channel["address"] == event_type
        (message_ref,) = channel["messages"].values()
        message = document["components"]["messages"][message_ref["$ref"].rsplit("/", 1)[1]]
        assert (message["x-event-type"], message["x-event-version"]) == (event_type, version)
        data_ref = message["payload"]["allOf"][1]["properties"]["data"]["$ref"]
        schema = document["components"]["schemas"][data_ref.rsplit("/", 1)[1]]
        fields = {field.encode_name for field in msgspec.structs.fields(payload_type)}
        assert set(schema["properties"]) == fields


def test_payload_schemas_are_named_after_struct_and_version() -> None:
    document = build_document()
    assert document["channels"]["users.user.registered.v1"]["messages"] == {
        "UserRegisteredV1": {"$ref": "#/components/messages/UserRegisteredV1"}
    }
    assert document["components"]["schemas"]["UserRegisteredV1"]["required"] == [
        "user_id",
        "email",
        "display_name",
        "role",
    ]


def test_messages_are_cloudevents_envelopes_around_the_payload() -> None:
    message = build_document()["components"]["messages"]["UserRegisteredV1"]
    envelope, specifics = message["payload"]["allOf"]
    assert envelope == {"$ref": "#/components/schemas/Envelope"}
    assert specifics["properties"] == {
        "type": {"const": "users.user.registered"},
        "dataschema": {"const": "urn:relay-shop:events:users.user.registered:v1"},
        "data": {"$ref": "#/components/schemas/UserRegisteredV1"},
    }


def test_messages_document_the_nats_headers() -> None:
    document = build_document()
    message = document["components"]["messages"]["OrderPlacedV1"]
    headers = document["components"]["schemas"][message["headers"]["$ref"].rsplit("/", 1)[1]]
    assert set(headers["properties"]) == {"Nats-Msg-Id", "traceparent", "tracestate"}
    assert headers["required"] == ["Nats-Msg-Id"]


def test_field_docstrings_become_schema_descriptions() -> None:
    schemas = build_document()["components"]["schemas"]
    assert schemas["OrderLine"]["properties"]["unit_price"]["description"] == "In minor units of the order's currency."


def test_the_stream_owner_sends_and_consumers_whose_filters_match_receive() -> None:
    document = build_document()
    assert receivers(document, "users.user.registered.v1", "send") == {"users"}
    assert receivers(document, "users.user.registered.v1", "receive") == {
        "orders-users-replica",
        "notify-users-replica",
    }
    assert receivers(document, "users.user.updated.v1", "receive") == {"notify-users-replica", "orders-users-replica"}
    assert receivers(document, "orders.order.placed.v1", "send") == {"orders"}
    assert receivers(document, "notify.notification.created.v1", "receive") == set()


def test_every_consumer_receives_some_channel() -> None:
    document = build_document()
    durables = {
        operation["x-jetstream"]["durable"]
        for operation in document["operations"].values()
        if operation["action"] == "receive"
    }
    assert durables == {consumer.durable for consumer in CONSUMERS}


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("users.user.registered", "users.user.registered", True),
        ("users.>", "users.user.registered", True),
        ("users.>", "users", False),
        ("users.*.registered", "users.user.registered", True),
        ("users.*", "users.user.registered", False),
        ("users.user", "users.user.registered", False),
        ("users.user.registered.more", "users.user.registered", False),
        ("orders.>", "users.user.registered", False),
    ],
)
def test_subject_filters_match_like_nats(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_an_event_type_no_stream_takes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no stream takes subject 'billing\.invoice\.issued'"):
        document_with({("billing.invoice.issued", 1): UserRenamed})


# breaking changes ----------------------------------------------------------------------------


def test_unchanged_contracts_break_nothing() -> None:
    assert breaking_changes(build_document(), build_document()) == []


def test_removing_a_field_of_a_published_version_is_breaking() -> None:
    assert breaking_changes(build_document(), document_with({REGISTERED: WithoutEmail})) == [
        "users.user.registered v1: field 'email' removed"
    ]


def test_retyping_a_field_of_a_published_version_is_breaking() -> None:
    assert breaking_changes(build_document(), document_with({REGISTERED: EmailAsNumber})) == [
        'users.user.registered v1: field \'email\' changed type from "string" to "integer"'
    ]


def test_changing_the_values_of_an_enum_is_breaking() -> None:
    assert breaking_changes(build_document(), document_with({REGISTERED: WithOwnerRole})) == [
        'users.user.registered v1: field \'role\' changed enum from ["admin", "user"] to ["admin", "owner", "user"]'
    ]


def test_adding_a_required_field_to_a_published_version_is_breaking() -> None:
    assert breaking_changes(build_document(), document_with({REGISTERED: WithRequiredLocale})) == [
        "users.user.registered v1: new field 'locale' is required (events published before lack it)"
    ]


def test_an_optional_field_becoming_required_is_breaking() -> None:
    published = document_with({REGISTERED: WithOptionalLocale})
    assert breaking_changes(published, document_with({REGISTERED: WithRequiredLocale})) == [
        "users.user.registered v1: field 'locale' became required"
    ]


def test_changing_a_nested_struct_breaks_the_events_that_carry_it() -> None:
    assert breaking_changes(build_document(), document_with({PLACED: PlacedWithoutSku})) == [
        "orders.order.placed v1: field 'lines[].sku' removed"
    ]


def test_removing_a_published_version_is_breaking() -> None:
    current = build_document({key: value for key, value in CONTRACTS.items() if key != REGISTERED})
    assert breaking_changes(build_document(), current) == ["users.user.registered v1: removed"]


def test_removing_an_envelope_field_is_breaking() -> None:
    current = copy.deepcopy(build_document())
    del current["components"]["schemas"]["Envelope"]["properties"]["source"]
    assert breaking_changes(build_document(), current) == ["envelope: field 'source' removed"]


def test_adding_an_optional_field_breaks_nothing() -> None:
    assert breaking_changes(build_document(), document_with({REGISTERED: WithOptionalLocale})) == []


def test_renaming_a_struct_that_keeps_its_shape_breaks_nothing() -> None:
    assert breaking_changes(build_document(), document_with({REGISTERED: AccountRegistered})) == []


def test_a_new_version_of_an_event_breaks_nothing() -> None:
    current = document_with({("users.user.registered", 2): UserRegisteredV2})
    assert "users.user.registered.v2" in current["channels"]
    assert "UserRegisteredV2" in current["components"]["schemas"]
    assert breaking_changes(build_document(), current) == []


def test_a_new_event_type_breaks_nothing() -> None:
    current = document_with({("users.user.renamed", 1): UserRenamed})
    assert current["channels"]["users.user.renamed.v1"]["address"] == "users.user.renamed"
    assert breaking_changes(build_document(), current) == []


# the command ---------------------------------------------------------------------------------


def test_regenerating_writes_the_document_and_then_checks_clean(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "asyncapi.json"
    assert main(["--path", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == render()
    assert main(["--check", "--path", str(path)]) == 0


def test_check_fails_on_a_stale_document_that_regenerating_fixes(tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.json"
    stale = build_document()
    stale["info"]["description"] = "an older description"
    path.write_text(render(stale), encoding="utf-8")
    assert main(["--check", "--path", str(path)]) == 1
    assert main(["--path", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == render()


def test_check_fails_when_the_document_is_missing(tmp_path: Path) -> None:
    assert main(["--check", "--path", str(tmp_path / "asyncapi.json")]) == 1


def test_regenerating_refuses_to_break_a_published_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As if v1 had been published with a field the contract has since dropped.
    published = build_document()
    schema = published["components"]["schemas"]["UserRegisteredV1"]
    schema["properties"]["legacy_id"] = {"type": "integer"}
    schema["required"].append("legacy_id")
    path = tmp_path / "asyncapi.json"
    path.write_text(render(published), encoding="utf-8")

    assert main(["--path", str(path)]) == 1
    assert main(["--check", "--path", str(path)]) == 1
    assert json.loads(path.read_text(encoding="utf-8")) == published
    assert "users.user.registered v1: field 'legacy_id' removed" in capsys.readouterr().err
