"""The published language: every event's envelope and payload, shared by every service.

An event on the wire is a CloudEvents 1.0 structured JSON document. Its ``data`` is one of the
payload structs below, chosen by ``type`` and ``dataschema`` (which carries the version). A payload
version never changes shape once published: a breaking change is a new version (see ``asyncapi``).
Each event also carries ``sequence``, its aggregate's version after the change, because redelivery
reorders events: a replica applies an event only when it is newer than what it already holds.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from uuid_utils.compat import uuid7

__all__ = (
    "CONTRACTS",
    "DecodedEvent",
    "Envelope",
    "EventPayload",
    "NotificationCreated",
    "OrderCancelled",
    "OrderDelivered",
    "OrderLine",
    "OrderPaid",
    "OrderPlaced",
    "OrderShipped",
    "UndecodableEventError",
    "UserDeactivated",
    "UserRegistered",
    "UserUpdated",
    "dataschema",
    "decode_event",
    "encode_event",
    "new_envelope",
)

SCHEMA_PREFIX = "urn:relay-shop:events"
PayloadT = TypeVar("PayloadT", bound="EventPayload")
Instant = Annotated[datetime.datetime, msgspec.Meta(tz=True)]


class EventPayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every payload. Subclasses set ``event_type`` and ``version``.

    Unknown fields are ignored on decoding, so a producer may add optional fields to a version
    without breaking consumers that were built against the older shape.
    """

    event_type: ClassVar[str]
    version: ClassVar[int]
    subject_field: ClassVar[str]
    """The payload field holding the aggregate's id (the envelope's ``subject``)."""


CONTRACTS: dict[tuple[str, int], type[EventPayload]] = {}


def contract(event_type: str, version: int, subject_field: str) -> Any:
    """Register a payload struct under its type and version."""

    def register(cls: type[PayloadT]) -> type[PayloadT]:
        key = (event_type, version)
        if key in CONTRACTS:
            raise ValueError(f"{event_type} v{version} is registered twice")
        cls.event_type = event_type
        cls.version = version
        cls.subject_field = subject_field
        CONTRACTS[key] = cls
        return cls

    return register


def dataschema(event_type: str, version: int) -> str:
    """The ``dataschema`` URI naming a payload's type and version."""
    return f"{SCHEMA_PREFIX}:{event_type}:v{version}"


# users ---------------------------------------------------------------------------------------


@contract("users.user.registered", 1, "user_id")
class UserRegistered(EventPayload, frozen=True, kw_only=True):
    """A new account exists."""

    user_id: uuid.UUID
    email: str
    display_name: str
    role: Literal["user", "admin"]
    tokens_valid_after: Instant | None = None
    """Access tokens of this account issued before this instant are void (absent: none so far)."""


@contract("users.user.updated", 1, "user_id")
class UserUpdated(EventPayload, frozen=True, kw_only=True):
    """An account's profile, role or active flag changed; the payload is its whole new state."""

    user_id: uuid.UUID
    email: str
    display_name: str
    role: Literal["user", "admin"]
    is_active: bool
    tokens_valid_after: Instant | None = None
    """Access tokens of this account issued before this instant are void: replicas refuse them.
    Moves forward on a role change, deactivation, password change or revoked refresh family."""


@contract("users.user.deactivated", 1, "user_id")
class UserDeactivated(EventPayload, frozen=True, kw_only=True):
    """An account was deactivated: it can no longer sign in or order."""

    user_id: uuid.UUID
    tokens_valid_after: Instant | None = None
    """Access tokens of this account issued before this instant are void (set by the deactivation)."""


# orders --------------------------------------------------------------------------------------


class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of an order, priced when the order was placed."""

    product_id: uuid.UUID
    sku: str
    name: str
    quantity: int
    unit_price: int
    """In minor units of the order's currency."""


@contract("orders.order.placed", 1, "order_id")
class OrderPlaced(EventPayload, frozen=True, kw_only=True):
    """An order was placed and its stock reserved."""

    order_id: uuid.UUID
    user_id: uuid.UUID
    lines: list[OrderLine]
    total: int
    currency: str


@contract("orders.order.paid", 1, "order_id")
class OrderPaid(EventPayload, frozen=True, kw_only=True):
    """An order was paid."""

    order_id: uuid.UUID
    user_id: uuid.UUID
    total: int
    currency: str


@contract("orders.order.shipped", 1, "order_id")
class OrderShipped(EventPayload, frozen=True, kw_only=True):
    """An order left the warehouse."""

    order_id: uuid.UUID
    user_id: uuid.UUID


@contract("orders.order.delivered", 1, "order_id")
class OrderDelivered(EventPayload, frozen=True, kw_only=True):
    """An order reached its customer."""

    order_id: uuid.UUID
    user_id: uuid.UUID


@contract("orders.order.cancelled", 1, "order_id")
class OrderCancelled(EventPayload, frozen=True, kw_only=True):
    """An order was cancelled and its stock returned."""

    order_id: uuid.UUID
    user_id: uuid.UUID
    reason: str
    """``customer``, ``payment_timeout``, ``user_deactivated`` or another short code."""


# notify --------------------------------------------------------------------------------------


@contract("notify.notification.created", 1, "notification_id")
class NotificationCreated(EventPayload, frozen=True, kw_only=True):
    """A notification was stored for a user."""

    notification_id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    title: str


# the envelope --------------------------------------------------------------------------------


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """A CloudEvents 1.0 event in structured JSON mode, with ``data`` still undecoded."""

    id: str
    """UUIDv7: unique, and sortable by creation time."""
    source: str
    """The producing service."""
    type: str
    subject: str
    """The aggregate's id."""
    time: Annotated[datetime.datetime, msgspec.Meta(tz=True)]
    """When the change happened (RFC 3339, always with a zone)."""
    dataschema: str
    """Names the payload's type and version."""
    sequence: int
    """The aggregate's version after this change; newer events have larger sequences."""
    data: msgspec.Raw
    specversion: str = "1.0"
    datacontenttype: str = "application/json"

    @property
    def version(self) -> int:
        """The payload version named by ``dataschema``."""
        return int(self.dataschema.rsplit(":v", 1)[1])


class DecodedEvent(msgspec.Struct, frozen=True):
    """An envelope and its typed payload."""

    envelope: Envelope
    payload: EventPayload


class UndecodableEventError(Exception):
    """The bytes are not an event this system knows; retrying cannot help."""


_envelope_decoder = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


def new_envelope(payload: EventPayload, *, source: str, sequence: int) -> Envelope:
    """Wrap ``payload`` in a fresh envelope (new UUIDv7 id, current time)."""
    return Envelope(
        id=str(uuid7()),
        source=source,
        type=payload.event_type,
        subject=str(getattr(payload, payload.subject_field)),
        time=datetime.datetime.now(datetime.UTC),
        dataschema=dataschema(payload.event_type, payload.version),
        sequence=sequence,
        data=msgspec.Raw(_encoder.encode(payload)),
    )


def encode_event(envelope: Envelope) -> bytes:
    """The envelope as JSON bytes, exactly as published."""
    return _encoder.encode(envelope)


def decode_event(data: bytes) -> DecodedEvent:
    """Decode an event and its payload.

    Raises:
        UndecodableEventError: Not JSON, not an envelope, an unknown type or version, or a payload
            that does not match its contract. The message says which.
    """
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise UndecodableEventError(f"not an event envelope: {error}") from error
    try:
        version = envelope.version
    except (IndexError, ValueError) as error:
        raise UndecodableEventError(f"dataschema {envelope.dataschema!r} names no version") from error
    payload_type = CONTRACTS.get((envelope.type, version))
    if payload_type is None:
        raise UndecodableEventError(f"unknown event type {envelope.type!r} version {version}")
    try:
        payload = msgspec.json.decode(envelope.data, type=payload_type)
    except msgspec.DecodeError as error:
        raise UndecodableEventError(f"{envelope.type} v{version} payload is invalid: {error}") from error
    return DecodedEvent(envelope=envelope, payload=payload)
