"""The rules of the catalog and of orders: pricing, stock that never goes below zero, the lifecycle."""

from __future__ import annotations

import datetime
import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, TypeVar

import msgspec
from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from msgspec import UNSET
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from orders.models import (
    IDEMPOTENCY_KEYS,
    KNOWN_USERS,
    LINES,
    ORDERS,
    PRODUCTS,
    SCHEMA,
    IdempotencyKey,
    Order,
    Product,
)
from orders.schemas import OrderLineOut, OrderOut, OrderPage, ProductOut, ProductPage
from orders.stock import PRODUCT_COLUMNS, lock_stock, return_stock
from orders.transactions import retry_transient
from shared.db import begun_driver_connection, contains_pattern, driver_connection, unit_of_work
from shared.errors import Conflict, Forbidden, NotFound, Unprocessable
from shared.events.contracts import (
    EventPayload,
    OrderCancelled,
    OrderDelivered,
    OrderPaid,
    OrderPlaced,
    OrderShipped,
)
from shared.events.contracts import (
    OrderLine as OrderLineEvent,
)
from shared.events.replicas import upsert_if_newer

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    import asyncpg
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from orders.schemas import OrderItem, OrderStatus, PlaceOrder, ProductCreate, ProductUpdate
    from orders.settings import OrdersSettings
    from shared.auth import Principal
    from shared.events.outbox import Outbox
    from shared.pagination import PageRequest

__all__ = ("TRANSITIONS", "CatalogService", "OrderAction", "OrderService", "PlacedOrder", "PricedLine")

OrderAction = Literal["pay", "ship", "deliver", "cancel"]

TRANSITIONS: dict[OrderAction, tuple[frozenset[str], str]] = {
    "pay": (frozenset({"pending"}), "paid"),
    "ship": (frozenset({"paid"}), "shipped"),
    "deliver": (frozenset({"shipped"}), "delivered"),
    "cancel": (frozenset({"pending", "paid"}), "cancelled"),
}
"""The state machine: which states an action may start from, and where it leads."""

OPEN_STATES = TRANSITIONS["cancel"][0]
ORDER_COLUMNS = (
    ORDERS.c.id,
    ORDERS.c.user_id,
    ORDERS.c.status,
    ORDERS.c.total,
    ORDERS.c.currency,
    ORDERS.c.cancel_reason,
    ORDERS.c.created_at,
    ORDERS.c.updated_at,
)
LINE_COLUMNS = (
    LINES.c.order_id,
    LINES.c.product_id,
    LINES.c.sku,
    LINES.c.name,
    LINES.c.unit_price,
    LINES.c.quantity,
)
# The reads every order request makes, built once over the tables rather than the mapped classes:
# executing ORM attributes sends even column selects through the ORM's machinery, which halved
# the throughput of GET /orders/{id} (bench/order_reads.py).
LINES_OF_ORDERS = (
    select(*LINE_COLUMNS)
    .where(LINES.c.order_id.in_(bindparam("order_ids", expanding=True)))
    .order_by(LINES.c.order_id, LINES.c.product_id)
)
# POST /orders' statements. The claim goes through the session: as the transaction's first
# statement it sends BEGIN. Every later one is SQL for that transaction's asyncpg connection
# (shared.db.begun_driver_connection): SQLAlchemy's statement, parameter and result machinery cost
# about 40 µs of CPU per statement; sending these five raw took a placement from about 1,150 to
# 820 µs of the API's CPU (measured in process).
CLAIM_KEY = (
    insert(IDEMPOTENCY_KEYS)
    .values(
        user_id=bindparam("user_id"),
        key=bindparam("key"),
        request_hash=bindparam("request_hash"),
        created_at=bindparam("now"),
        expires_at=bindparam("expires_at"),
    )
    .on_conflict_do_nothing()
    .returning(IDEMPOTENCY_KEYS.c.key)
)
CUSTOMER_IS_ACTIVE_SQL = f"SELECT is_active FROM {SCHEMA}.{KNOWN_USERS.name} WHERE user_id = $1 FOR SHARE"
REMEMBER_CUSTOMER_SQL = (
    f"INSERT INTO {SCHEMA}.{KNOWN_USERS.name} (user_id, is_active, sequence) VALUES ($1, true, 0)"
    " ON CONFLICT DO NOTHING"
)
# The order, its lines and the answer kept on the claimed key, in one statement (one round trip
# instead of three). Every row is new or already this transaction's (the key), so no lock is
# taken out of the order in orders.stock; the lines' foreign keys are checked at the end of the
# statement, when the order row is there.
RECORD_ORDER_SQL = (
    f"WITH placed AS (INSERT INTO {SCHEMA}.{ORDERS.name}"
    " (id, user_id, status, total, currency, version, created_at, updated_at)"
    " VALUES ($1, $2, 'pending', $3, $4, 1, $5, $5)),"
    f" lines AS (INSERT INTO {SCHEMA}.{LINES.name} (id, order_id, product_id, sku, name, unit_price, quantity)"
    " SELECT line.id, $1, line.product_id, line.sku, line.name, line.unit_price, line.quantity"
    " FROM unnest($6::uuid[], $7::uuid[], $8::varchar[], $9::varchar[], $10::bigint[], $11::integer[])"
    " AS line (id, product_id, sku, name, unit_price, quantity))"
    f" UPDATE {SCHEMA}.{IDEMPOTENCY_KEYS.name} SET status_code = 201, response_body = $12"
    " WHERE user_id = $2 AND key = $13"
)
# The two public reads every client repeats, as plain SQL for the session's asyncpg connection
# (shared.db.driver_connection): one round trip each, no BEGIN/ROLLBACK, no statement building.
# An order and its lines come in one statement: the order's columns repeat on each line's row.
PRODUCT_BY_ID_SQL = (
    f"SELECT {', '.join(column.name for column in PRODUCT_COLUMNS)} FROM {SCHEMA}.{PRODUCTS.name} WHERE id = $1"
)
ORDER_WITH_LINES_SQL = (
    f"SELECT {', '.join(f'o.{column.name}' for column in ORDER_COLUMNS)},"
    " l.product_id, l.sku, l.name, l.unit_price, l.quantity"
    f" FROM {SCHEMA}.{ORDERS.name} AS o LEFT JOIN {SCHEMA}.{LINES.name} AS l ON l.order_id = o.id"
    " WHERE o.id = $1 ORDER BY l.product_id"
)
_json = msgspec.json.Encoder()


class PricedLine(NamedTuple):
    """One line of an order, priced from the catalog as the order is placed.

    Built once per line (:func:`_price`): the stored row, the answer's line and the line of
    ``orders.order.placed`` are all made from it. Its fields are ``order_line`` columns.
    """

    product_id: uuid.UUID
    sku: str
    name: str
    unit_price: int
    quantity: int


class _StoredLine(NamedTuple):
    """An order line read back: the last columns of :data:`ORDER_WITH_LINES_SQL`, in order."""

    product_id: uuid.UUID
    sku: str
    name: str
    unit_price: int
    quantity: int


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ProductRepository(SQLAlchemyAsyncRepository[Product]):
    """Products, for the ordinary catalog reads and writes."""

    model_type = Product


class CatalogService:
    """Products and their stock. Writes are for administrators; reads are public."""

    def __init__(self, *, session: AsyncSession) -> None:
        self.session = session

    @cached_property
    def repository(self) -> ProductRepository:
        """advanced-alchemy's repository over this service's session."""
        return ProductRepository(session=self.session, auto_commit=False)

    async def create(self, data: ProductCreate) -> ProductOut:
        """Add a product.

        Raises:
            Conflict: The SKU is taken.
        """
        async with unit_of_work(self.session):
            product = Product(**msgspec.structs.asdict(data))
            self.session.add(product)
            try:
                await self.session.flush()
            except IntegrityError as error:
                raise Conflict(f"A product with SKU {data.sku!r} already exists.") from error
        return _product_out(product)

    @retry_transient
    async def update(self, product_id: uuid.UUID, changes: ProductUpdate) -> ProductOut:
        """Change a product's name, description, price or active flag.

        Raises:
            NotFound: No such product.
        """
        values = {
            field: value
            for field in ("name", "description", "price", "is_active")
            if (value := getattr(changes, field)) is not UNSET
        }
        async with unit_of_work(self.session):
            locked = await lock_stock(self.session, [product_id])  # product rows: only through the lock order
            if not locked.rows:
                raise NotFound("No such product.")
            if not values:
                return locked.rows[0]
            row = (
                await self.session.execute(
                    update(PRODUCTS)
                    .where(PRODUCTS.c.id == product_id)
                    .values(**values, updated_at=_now())
                    .returning(*PRODUCT_COLUMNS)
                )
            ).one()
        return ProductOut(**row._asdict())

    @retry_transient
    async def restock(self, product_id: uuid.UUID, quantity: int) -> ProductOut:
        """Add ``quantity`` units to the stock.

        Raises:
            NotFound: No such product.
        """
        async with unit_of_work(self.session):
            locked = await lock_stock(self.session, [product_id])
            if not locked.rows:
                raise NotFound("No such product.")
            (changed,) = await locked.change({product_id: quantity})
        return changed

    async def get(self, product_id: uuid.UUID, *, include_inactive: bool) -> ProductOut:
        """One product; an inactive one exists only for administrators.

        Raises:
            NotFound: No such product (or not for this caller).
        """
        async with driver_connection(self.session) as connection:
            row = await connection.fetchrow(PRODUCT_BY_ID_SQL, product_id)
        if row is None or (not row["is_active"] and not include_inactive):
            raise NotFound("No such product.")
        return ProductOut(**row)

    async def list_products(self, *, search: str | None, active: bool | None, request: PageRequest) -> ProductPage:
        """Products by name, optionally matching ``search`` in name or SKU and filtered by ``active``."""
        filters: list[object] = [LimitOffset(limit=request.limit, offset=request.offset)]
        if active is not None:
            filters.append(Product.is_active.is_(active))
        if search:
            pattern = contains_pattern(search)
            filters.append(or_(Product.name.ilike(pattern, escape="\\"), Product.sku.ilike(pattern, escape="\\")))
        products, total = await self.repository.get_many_and_count(
            *filters,  # type: ignore[arg-type]  # a mix of filter kinds, each accepted
            order_by=[(Product.name, False), (Product.id, False)],
        )
        return ProductPage.of([_product_out(p) for p in products], total=total, request=request)


@dataclass(frozen=True)
class PlacedOrder:
    """The answer to ``POST /orders``, exactly as first given (replayed for a repeated key)."""

    status_code: int
    body: bytes
    replayed: bool


class OrderService:
    """Orders and their lifecycle. Each public method is one transaction (or joins the caller's)."""

    def __init__(self, *, session: AsyncSession, outbox: Outbox, settings: OrdersSettings) -> None:
        self.session = session
        self.outbox = outbox
        self.settings = settings

    @retry_transient
    async def place(self, user: Principal, order: PlaceOrder, *, idempotency_key: str) -> PlacedOrder:
        """Price the items from the catalog, reserve their stock and record the order, all at once.

        The same key with the same body (from the same user) replays the first answer, even when
        both requests race: the second waits on the first's key row and then reads its answer.

        Raises:
            Forbidden: The user was deactivated (even if their token is still valid).
            Unprocessable: The same key with another body; duplicate, unknown or inactive products;
                mixed currencies.
            Conflict: Not enough stock for one or more products (nothing is reserved then).
        """
        request_hash = hashlib.sha256(_json.encode(order)).hexdigest()
        now = _now()
        async with unit_of_work(self.session):
            replay = await self._claim_key(user.id, idempotency_key, request_hash, now)
            if replay is not None:
                return replay
            driver = await begun_driver_connection(self.session)
            if driver is None:  # the claim was sent through the session, which began the transaction
                raise RuntimeError("placement's transaction has not begun in Postgres")
            await self._check_customer(driver, user.id)
            body = await self._create(driver, user.id, idempotency_key, order.items, now)
        return PlacedOrder(status_code=201, body=body, replayed=False)

    async def _claim_key(
        self, user_id: uuid.UUID, key: str, request_hash: str, now: datetime.datetime
    ) -> PlacedOrder | None:
        expires_at = now + datetime.timedelta(seconds=self.settings.idempotency_ttl_seconds)
        claimed = await self.session.execute(
            CLAIM_KEY,
            {"user_id": user_id, "key": key, "request_hash": request_hash, "now": now, "expires_at": expires_at},
        )
        if claimed.first() is not None:
            return None
        # Another request holds or held this key. Its row was committed with its answer (a failed
        # request rolls its key back), so it can be read now.
        existing = await self.session.scalar(
            select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key).with_for_update()
        )
        if existing is None:  # the first request failed and took its key with it: take it over
            return await self._claim_key(user_id, key, request_hash, now)
        if existing.expires_at <= now:
            existing.request_hash, existing.created_at, existing.expires_at = request_hash, now, expires_at
            existing.status_code = existing.response_body = None
            return None
        if existing.request_hash != request_hash:
            raise Unprocessable("This Idempotency-Key was used with a different request body.")
        if existing.status_code is None or existing.response_body is None:
            raise Conflict("A request with this Idempotency-Key is still in progress.")
        return PlacedOrder(status_code=existing.status_code, body=existing.response_body, replayed=True)

    @staticmethod
    async def _check_customer(driver: asyncpg.Connection, user_id: uuid.UUID) -> None:
        # A user orders may not have heard of yet is fine (the token proves them); remember them.
        # FOR SHARE serialises with a deactivation, which updates this row: either it sees this
        # order and cancels it, or this order sees the user deactivated.
        # The row is there for every order but a user's first: read it first, insert only when missing.
        is_active = await driver.fetchval(CUSTOMER_IS_ACTIVE_SQL, user_id)
        if is_active is None:
            await driver.execute(REMEMBER_CUSTOMER_SQL, user_id)
            is_active = await driver.fetchval(CUSTOMER_IS_ACTIVE_SQL, user_id)
        if not is_active:
            raise Forbidden("This account is deactivated and cannot place orders.")

    async def _create(
        self,
        driver: asyncpg.Connection,
        user_id: uuid.UUID,
        key: str,
        items: Sequence[OrderItem],
        now: datetime.datetime,
    ) -> bytes:
        """Check, price, reserve, record and announce one order; each step refuses what it must.

        Returns:
            The answer (kept on the claimed key for replays).
        """
        quantities = _quantities(items)
        # Step 4 of the lock order (orders.stock): every product of the order, in id order, at once.
        locked = await lock_stock(self.session, quantities)
        products = _on_sale(locked.rows, quantities)
        currency = _one_currency(products)
        _require_stock(products, quantities)
        lines = _price(products, quantities)
        await locked.change({line.product_id: -line.quantity for line in lines})
        placed, body = await self._record(driver, user_id, key, lines, currency, now)
        await self.outbox.add(self.session, _placed_event(placed, lines), sequence=1)
        return body

    @staticmethod
    async def _record(
        driver: asyncpg.Connection,
        user_id: uuid.UUID,
        key: str,
        lines: Sequence[PricedLine],
        currency: str,
        now: datetime.datetime,
    ) -> tuple[OrderOut, bytes]:
        """Insert the order and its lines and keep the answer on the key, in one statement.

        The answer is the order as ``GET /orders/{id}`` will show it: every value is known here.
        """
        answered = [_line_out(line) for line in lines]
        placed = OrderOut(
            id=uuid7(),
            user_id=user_id,
            status="pending",
            lines=answered,
            total=sum(line.line_total for line in answered),
            currency=currency,
            cancel_reason=None,
            created_at=now,
            updated_at=now,
        )
        body = _json.encode(placed)
        await driver.execute(
            RECORD_ORDER_SQL,
            placed.id,
            user_id,
            placed.total,
            currency,
            now,
            [uuid7() for _ in lines],
            [line.product_id for line in lines],
            [line.sku for line in lines],
            [line.name for line in lines],
            [line.unit_price for line in lines],
            [line.quantity for line in lines],
            body,
            key,
        )
        return placed, body

    async def get(self, user: Principal, order_id: uuid.UUID) -> OrderOut:
        """One order, for its owner or an administrator.

        Raises:
            NotFound: No such order, or it belongs to someone else (ids don't leak).
        """
        async with driver_connection(self.session) as connection:
            rows = await connection.fetch(ORDER_WITH_LINES_SQL, order_id)
        if not rows:
            raise NotFound("No such order.")
        head = rows[0]
        return _visible(
            user,
            OrderOut(
                id=head["id"],
                user_id=head["user_id"],
                status=head["status"],
                lines=[_line_out(_StoredLine(*row[-5:])) for row in rows if row["product_id"] is not None],
                total=head["total"],
                currency=head["currency"],
                cancel_reason=head["cancel_reason"],
                created_at=head["created_at"],
                updated_at=head["updated_at"],
            ),
        )

    async def list_orders(
        self,
        user: Principal,
        *,
        owner: uuid.UUID | None,
        status: OrderStatus | None,
        request: PageRequest,
    ) -> OrderPage:
        """Orders newest first: one's own, or (administrators) anyone's, filtered by owner and status."""
        conditions = []
        if not user.is_admin:
            conditions.append(Order.user_id == user.id)
        elif owner is not None:
            conditions.append(Order.user_id == owner)
        if status is not None:
            conditions.append(Order.status == status)
        total = await self.session.scalar(select(func.count()).select_from(Order).where(*conditions)) or 0
        rows = (
            await self.session.execute(
                select(*ORDER_COLUMNS)
                .where(*conditions)
                .order_by(ORDERS.c.created_at.desc(), ORDERS.c.id.desc())
                .limit(request.limit)
                .offset(request.offset)
            )
        ).all()
        lines = await self._lines([row.id for row in rows])
        items = [OrderOut(**row._asdict(), lines=lines[row.id]) for row in rows]
        return OrderPage.of(items, total=total, request=request)

    async def _lines(self, order_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[OrderLineOut]]:
        lines: dict[uuid.UUID, list[OrderLineOut]] = defaultdict(list)
        if not order_ids:
            return lines
        for row in await self.session.execute(LINES_OF_ORDERS, {"order_ids": order_ids}):
            lines[row.order_id].append(_line_out(row))
        return lines

    @retry_transient
    async def act(self, user: Principal, order_id: uuid.UUID, action: OrderAction) -> OrderOut:
        """Move an order along its lifecycle.

        Pay: the owner. Cancel: the owner or an administrator. Ship and deliver: administrators
        (checked by the route's guard).

        Raises:
            NotFound: No such order, or it belongs to someone else.
            Forbidden: An administrator tried to pay someone else's order.
            Conflict: The order is in a state the action cannot start from.
        """
        async with unit_of_work(self.session):
            order = _visible(
                user, await self.session.scalar(select(Order).where(Order.id == order_id).with_for_update())
            )
            if action == "pay" and order.user_id != user.id:
                raise Forbidden("Only the customer pays an order.")
            reason = "customer" if order.user_id == user.id else "admin"
            await self._transition([order], action, reason=reason)
        return await self.get(user, order_id)

    async def _transition(self, orders: Sequence[Order], action: OrderAction, *, reason: str) -> None:
        """Move orders this transaction has locked (step 3 of the lock order) and write their events.

        A cancel puts back the stock of all of them at once, summed per product (step 4).
        """
        allowed_from, target = TRANSITIONS[action]
        for order in orders:
            if order.status not in allowed_from:
                raise Conflict(f"Cannot {action} an order that is {order.status}.")
        if action == "cancel":
            await return_stock(self.session, [order.id for order in orders])
        now = _now()
        events: list[tuple[EventPayload, int]] = []
        for order in orders:
            order.status = target
            order.version += 1
            order.updated_at = now
            event: EventPayload
            if action == "cancel":
                order.cancel_reason = reason
                event = OrderCancelled(order_id=order.id, user_id=order.user_id, reason=reason)
            elif action == "pay":
                event = OrderPaid(order_id=order.id, user_id=order.user_id, total=order.total, currency=order.currency)
            elif action == "ship":
                event = OrderShipped(order_id=order.id, user_id=order.user_id)
            else:
                event = OrderDelivered(order_id=order.id, user_id=order.user_id)
            events.append((event, order.version))
        await self.session.flush()
        for event, sequence in events:
            await self.outbox.add(self.session, event, sequence=sequence)

    @retry_transient
    async def cancel_open_orders(self, user_id: uuid.UUID, *, reason: str) -> int:
        """Cancel every pending or paid order of a user and return their stock; how many were cancelled."""
        async with unit_of_work(self.session):
            orders = (
                await self.session.scalars(
                    select(Order)
                    .where(Order.user_id == user_id, Order.status.in_(OPEN_STATES))
                    .order_by(Order.id)
                    .with_for_update()
                )
            ).all()
            await self._transition(orders, "cancel", reason=reason)
        return len(orders)

    @retry_transient
    async def cancel_unpaid(self, *, older_than: datetime.timedelta, batch_size: int = 100) -> int:
        """Cancel pending orders placed before ``now - older_than`` (reason ``payment_timeout``).

        Rows are claimed with SKIP LOCKED, so several workers sweep side by side without waiting.
        """
        cutoff = _now() - older_than
        async with unit_of_work(self.session):
            orders = (
                await self.session.scalars(
                    select(Order)
                    .where(Order.status == "pending", Order.created_at < cutoff)
                    .order_by(Order.created_at)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            await self._transition(orders, "cancel", reason="payment_timeout")
        return len(orders)

    async def remember_user(
        self,
        user_id: uuid.UUID,
        *,
        email: str | None,
        is_active: bool,
        sequence: int,
        tokens_valid_after: datetime.datetime | None = None,
    ) -> bool:
        """Update the replica of a user from one of users' events, unless it is older than what is held.

        ``tokens_valid_after`` (when the event carries it) makes the API refuse older access tokens.
        """
        values: dict[str, object] = {"is_active": is_active}
        if email is not None:
            values["email"] = email
        if tokens_valid_after is not None:
            values["tokens_valid_after"] = tokens_valid_after
        async with unit_of_work(self.session):
            return await upsert_if_newer(
                self.session,
                KNOWN_USERS,
                key={"user_id": user_id},
                values=values,
                sequence=sequence,
            )


class _Owned(Protocol):
    @property
    def user_id(self) -> uuid.UUID: ...


_OwnedT = TypeVar("_OwnedT", bound=_Owned)


def _visible(user: Principal, order: _OwnedT | None) -> _OwnedT:
    """The order (a row or a model), if ``user`` may see it: its owner or an administrator.

    Raises:
        NotFound: No such order, or someone else's: the same answer, so order ids don't leak.
    """
    if order is None or (order.user_id != user.id and not user.is_admin):
        raise NotFound("No such order.")
    return order


def _quantities(items: Sequence[OrderItem]) -> dict[uuid.UUID, int]:
    """How many of each product the order asks for.

    Raises:
        Unprocessable: A product appears twice.
    """
    quantities = {item.product_id: item.quantity for item in items}
    if len(quantities) != len(items):
        raise Unprocessable("Each product may appear only once in an order.")
    return quantities


def _on_sale(locked: Sequence[ProductOut], quantities: Mapping[uuid.UUID, int]) -> list[ProductOut]:
    """The ordered products that exist and are on sale, in id order.

    Raises:
        Unprocessable: Naming every ordered product that is unknown or inactive.
    """
    products = [p for p in locked if p.is_active]
    unknown = sorted(str(product_id) for product_id in quantities.keys() - {p.id for p in products})
    if unknown:
        raise Unprocessable(f"Unknown or unavailable products: {', '.join(unknown)}.")
    return products


def _one_currency(products: Sequence[ProductOut]) -> str:
    """The order's currency: every product's.

    Raises:
        Unprocessable: The products are priced in several currencies.
    """
    currencies = {p.currency for p in products}
    if len(currencies) > 1:
        raise Unprocessable(f"An order has one currency; these products are priced in {', '.join(sorted(currencies))}.")
    return str(currencies.pop())


def _require_stock(products: Sequence[ProductOut], quantities: Mapping[uuid.UUID, int]) -> None:
    """Raises Conflict naming every product with less stock than ordered (nothing is reserved then)."""
    short = [f"{p.sku} (wanted {quantities[p.id]}, in stock {p.stock})" for p in products if p.stock < quantities[p.id]]
    if short:
        raise Conflict(f"Not enough stock for: {'; '.join(short)}.")


def _price(products: Sequence[ProductOut], quantities: Mapping[uuid.UUID, int]) -> list[PricedLine]:
    """One line per product at its catalog price now (a later price change never alters the order)."""
    return [
        PricedLine(product_id=p.id, sku=p.sku, name=p.name, unit_price=p.price, quantity=quantities[p.id])
        for p in products
    ]


def _line_out(line: PricedLine | _StoredLine | Row[*tuple[Any, ...]]) -> OrderLineOut:
    """A line as answered: a line being placed, or one read back (the same fields, stored)."""
    return OrderLineOut(
        product_id=line.product_id,
        sku=line.sku,
        name=line.name,
        unit_price=line.unit_price,
        quantity=line.quantity,
        line_total=line.unit_price * line.quantity,
    )


def _placed_event(order: OrderOut, lines: Sequence[PricedLine]) -> OrderPlaced:
    return OrderPlaced(
        order_id=order.id,
        user_id=order.user_id,
        lines=[OrderLineEvent(**line._asdict()) for line in lines],
        total=order.total,
        currency=order.currency,
    )


def _product_out(product: Product) -> ProductOut:
    return ProductOut(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        price=product.price,
        currency=product.currency,
        stock=product.stock,
        is_active=product.is_active,
        created_at=product.created_at,
        updated_at=product.updated_at,
    )
