"""What the orders API accepts and answers: msgspec Structs, never models."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.pagination import Page

__all__ = (
    "MAX_LINES",
    "MAX_ORDER_TOTAL",
    "MAX_PRICE",
    "MAX_QUANTITY",
    "OrderItem",
    "OrderLineOut",
    "OrderOut",
    "OrderPage",
    "OrderStatus",
    "PlaceOrder",
    "ProductCreate",
    "ProductOut",
    "ProductPage",
    "ProductUpdate",
    "Restock",
)

MAX_PRICE = 1_000_000_000
"""The dearest product, in minor units (10 million EUR)."""
MAX_QUANTITY = 1000
"""Most units of one product in one order."""
MAX_LINES = 50
"""Most lines in one order."""
MAX_ORDER_TOTAL = MAX_PRICE * MAX_QUANTITY * MAX_LINES
"""5 * 10**13: fits the 64-bit money columns with room to spare, and stays below 2**53, so a
JavaScript client reads every total exactly."""

Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, like EUR.")]
MinorUnits = Annotated[int, Meta(ge=0, le=MAX_PRICE, description="Price in minor units (cents).")]
Sku = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
ProductName = Annotated[str, Meta(min_length=1, max_length=200)]
Description = Annotated[str, Meta(max_length=5000)]
OrderStatus = Literal["pending", "paid", "shipped", "delivered", "cancelled"]


class ProductCreate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A new product."""

    sku: Sku
    name: ProductName
    price: MinorUnits
    currency: Currency
    description: Description = ""
    stock: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    is_active: bool = True


class ProductUpdate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Changes to a product. Its SKU and currency stay; orders already placed keep their prices."""

    name: ProductName | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    price: MinorUnits | UnsetType = UNSET
    is_active: bool | UnsetType = UNSET


class Restock(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Units arriving in the warehouse."""

    quantity: Annotated[int, Meta(ge=1, le=1_000_000)]


class ProductOut(msgspec.Struct, frozen=True):
    """A product as the catalog shows it."""

    id: uuid.UUID
    sku: str
    name: str
    description: str
    price: int
    currency: str
    stock: int
    is_active: bool
    created_at: datetime.datetime
    updated_at: datetime.datetime


class ProductPage(Page[ProductOut], frozen=True):
    """One page of products."""

    items: list[ProductOut]


class OrderItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How many of one product."""

    product_id: uuid.UUID
    quantity: Annotated[int, Meta(ge=1, le=MAX_QUANTITY)]


class PlaceOrder(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An order: 1 to 50 lines, each product at most once. Prices come from the catalog, not the client."""

    items: Annotated[list[OrderItem], Meta(min_length=1, max_length=MAX_LINES)]


class OrderLineOut(msgspec.Struct, frozen=True):
    """One line, priced when the order was placed."""

    product_id: uuid.UUID
    sku: str
    name: str
    unit_price: int
    quantity: int
    line_total: int


class OrderOut(msgspec.Struct, frozen=True):
    """An order with its lines."""

    id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    lines: list[OrderLineOut]
    total: int
    currency: str
    cancel_reason: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime


class OrderPage(Page[OrderOut], frozen=True):
    """One page of orders, newest first."""

    items: list[OrderOut]
