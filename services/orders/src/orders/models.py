"""The orders schema: catalog, stock, orders, idempotency keys and the users replica."""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING, cast

from advanced_alchemy.base import CommonTableAttributes
from advanced_alchemy.mixins import AuditColumns, UUIDv7PrimaryKey
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_registry
from shared.events.outbox import Outbox
from shared.events.tables import define_event_tables

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = (
    "EVENT_TABLES",
    "IDEMPOTENCY_KEYS",
    "KNOWN_USERS",
    "LINES",
    "ORDERS",
    "OUTBOX",
    "PRODUCTS",
    "SCHEMA",
    "Base",
    "IdempotencyKey",
    "KnownUser",
    "Order",
    "OrderLine",
    "Product",
)

SCHEMA = "orders"


class Base(CommonTableAttributes, DeclarativeBase):
    """Every table of this service lives in the ``orders`` schema."""

    registry = schema_registry(SCHEMA)


class Product(UUIDv7PrimaryKey, AuditColumns, Base):
    """Something for sale, with its stock."""

    __tablename__ = "product"
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_not_negative"),
        CheckConstraint("price >= 0", name="price_not_negative"),
    )

    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    price: Mapped[int] = mapped_column(BigInteger)
    """In minor units of ``currency`` (cents for EUR). Money is 64-bit: price * quantity * lines
    overflows 32 bits well inside the request limits (``orders.schemas``)."""
    currency: Mapped[str] = mapped_column(String(3))
    """ISO 4217 code."""
    stock: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """64-bit: restocks add up without a ceiling, and 2**31 is only ~2,000 of the largest."""
    is_active: Mapped[bool] = mapped_column(default=True, server_default=text("true"))


class Order(UUIDv7PrimaryKey, AuditColumns, Base):
    """One customer's order and where it is in its lifecycle."""

    __tablename__ = "customer_order"
    __table_args__ = (
        Index("ix_customer_order_user_id_created_at", "user_id", "created_at"),
        Index("ix_customer_order_pending_created_at", "created_at", postgresql_where=text("status = 'pending'")),
    )

    user_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(16))
    """``pending``, ``paid``, ``shipped``, ``delivered`` or ``cancelled``."""
    total: Mapped[int] = mapped_column(BigInteger)
    """In minor units; the largest legal order (``orders.schemas.MAX_ORDER_TOTAL``) fits 64 bits."""
    currency: Mapped[str] = mapped_column(String(3))
    cancel_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """Bumped on every transition: the sequence its events carry."""


class OrderLine(UUIDv7PrimaryKey, Base):
    """One product of an order, with the price it had when the order was placed."""

    __tablename__ = "order_line"
    __table_args__ = (Index("ix_order_line_order_id", "order_id"),)

    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(f"{SCHEMA}.customer_order.id", ondelete="CASCADE"))
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(f"{SCHEMA}.product.id"))
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    unit_price: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)


class IdempotencyKey(Base):
    """The first answer to a ``POST /orders`` with a given key, replayed for the same request."""

    __tablename__ = "idempotency_key"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    expires_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))


class KnownUser(Base):
    """What orders knows of a user, from users' events (and from tokens, for users not seen yet)."""

    __tablename__ = "known_user"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    is_active: Mapped[bool] = mapped_column(default=True)
    sequence: Mapped[int] = mapped_column(Integer)
    """The users aggregate's version this row reflects (0: seen only in a token)."""
    tokens_valid_after: Mapped[datetime.datetime | None] = mapped_column(
        DateTimeUTC(timezone=True), default=None, index=True
    )
    """From users' events: access tokens issued before it are refused (``shared.revocations``)."""


# The tables under the models, for the Core statements of the paths every request takes (stock,
# placement, order reads): statements over the tables skip the ORM's machinery (bench/order_reads.py).
PRODUCTS = cast("Table", Product.__table__)
ORDERS = cast("Table", Order.__table__)
LINES = cast("Table", OrderLine.__table__)
KNOWN_USERS = cast("Table", KnownUser.__table__)
IDEMPOTENCY_KEYS = cast("Table", IdempotencyKey.__table__)

EVENT_TABLES = define_event_tables(Base.metadata)
"""The outbox for orders' events and the inbox of the users events it applied."""
OUTBOX = Outbox(EVENT_TABLES, source="orders")
"""The service's one outbox: every route, handler, sweep and command of orders adds its events here."""
