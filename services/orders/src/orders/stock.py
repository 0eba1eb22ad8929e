"""Stock: the one place where product rows are locked and their stock changed.

The lock order of the orders service. Every transaction takes row locks in this order, and never
goes back to an earlier kind once it holds a later one; so no two transactions can hold one row
each and wait for the other's (a deadlock needs a cycle, and locks taken in one global order
cannot form one):

1. the caller's ``idempotency_key`` row (placement claims it first);
2. the user's ``known_user`` row (placement reads it ``FOR SHARE``; a deactivation updates it);
3. ``customer_order`` rows: a cancel locks its one order, a deactivation the user's open orders
   in id order, the unpaid sweep its batch with ``SKIP LOCKED`` (so it never waits on one);
4. ``product`` rows, last, all that the transaction will touch, in one statement, in product id
   order, through :func:`lock_stock` and nothing else. Several orders' lines are summed per
   product first, so a product is locked once however many orders return stock to it.

Rows written after that are new (the order, its lines, outbox events): nobody else can be waiting
for them, and an order line's foreign-key check only takes a share lock on a product row this
transaction already holds. A transaction that touches one product (a restock, a catalog edit)
follows the rule trivially.
"""

from __future__ import annotations

import datetime
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from orders.models import LINES, PRODUCTS, SCHEMA
from orders.schemas import ProductOut
from shared.db import DriverStatement, begun_driver_connection

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ("PRODUCT_COLUMNS", "LockedStock", "lock_stock", "return_stock")


PRODUCT_COLUMNS = (
    PRODUCTS.c.id,
    PRODUCTS.c.sku,
    PRODUCTS.c.name,
    PRODUCTS.c.description,
    PRODUCTS.c.price,
    PRODUCTS.c.currency,
    PRODUCTS.c.stock,
    PRODUCTS.c.is_active,
    PRODUCTS.c.created_at,
    PRODUCTS.c.updated_at,
)
# ``id = ANY($1)`` with one array parameter keeps one statement (and one prepared plan) for any
# number of products; ORDER BY under FOR UPDATE makes Postgres lock the rows in that order.
_LOCK = (
    select(*PRODUCT_COLUMNS)
    .where(PRODUCTS.c.id == any_(bindparam("ids", type_=ARRAY(PRODUCTS.c.id.type))))
    .order_by(PRODUCTS.c.id)
    .with_for_update()
)
# The lock as SQL for the transaction's asyncpg connection when it is not the transaction's first
# statement, and the stock change, always sent there (the rows are locked: the transaction has
# begun): a placement sends both on every request, and SQLAlchemy's statement and result
# machinery cost more CPU than the round trip itself. The change is one UPDATE for every product:
# the rows are already locked in this transaction, so the order in which it visits them no longer
# matters.
_LOCK_ON_DRIVER = DriverStatement(_LOCK)
_CHANGE_SQL = (
    f"UPDATE {SCHEMA}.{PRODUCTS.name} SET stock = {PRODUCTS.name}.stock + change.delta, updated_at = $3"
    " FROM unnest($1::uuid[], $2::bigint[]) AS change (product_id, delta)"
    f" WHERE {PRODUCTS.name}.id = change.product_id"
    f" RETURNING {', '.join(f'{PRODUCTS.name}.{column.name}' for column in PRODUCT_COLUMNS)}"
)
_HIGHEST_LOCKED = "orders.stock.highest_locked"
"""``session.info`` key: (the transaction, the highest product id it locked)."""
_LINES_PER_PRODUCT = (
    select(LINES.c.product_id, func.sum(LINES.c.quantity).label("quantity"))
    .where(LINES.c.order_id == any_(bindparam("order_ids", type_=ARRAY(LINES.c.order_id.type))))
    .group_by(LINES.c.product_id)
)


class LockedStock:
    """Product rows locked in id order by :func:`lock_stock`; the only way to change their stock."""

    def __init__(self, session: AsyncSession, rows: Sequence[ProductOut]) -> None:
        self._session = session
        self.rows = rows
        """The locked products (every column of :data:`PRODUCT_COLUMNS`), in id order."""
        self._ids = frozenset(row.id for row in rows)

    async def change(self, deltas: Mapping[uuid.UUID, int]) -> Sequence[ProductOut]:
        """Add ``deltas[product]`` (negative: take) to each product's stock, in one statement.

        The ``stock >= 0`` check constraint still stands behind the caller's own check.

        Returns:
            The changed products, every column of :data:`PRODUCT_COLUMNS`.

        Raises:
            ValueError: A product that was not locked here (that would break the lock order).
        """
        changes = {product: delta for product, delta in deltas.items() if delta}
        if not changes.keys() <= self._ids:
            raise ValueError(f"stock changed without its lock: {sorted(map(str, changes.keys() - self._ids))}")
        if not changes:
            return []
        ids = sorted(changes)
        driver = await begun_driver_connection(self._session)
        if driver is None:  # the lock was this transaction's statement, so it has begun in Postgres
            raise RuntimeError("stock changed outside the transaction that locked it")
        return _product_rows(await driver.fetch(_CHANGE_SQL, ids, [changes[product] for product in ids], _now()))


async def lock_stock(session: AsyncSession, product_ids: Collection[uuid.UUID]) -> LockedStock:
    """Lock these products' rows, in product id order, in one statement (step 4 of the lock order).

    Call it once per transaction, with every product the transaction will change, after any order
    rows it locks. Unknown ids are simply absent from ``rows``.

    Raises:
        RuntimeError: This transaction already locked a product with an id as high or higher: a
            second call would take product rows out of id order (a programming error).
    """
    ids = sorted(set(product_ids))
    if not ids:
        return LockedStock(session, [])
    held = session.info.get(_HIGHEST_LOCKED)
    if held is not None and held[0] is session.sync_session.get_transaction() and ids[0] <= held[1]:
        raise RuntimeError("products locked out of id order: lock all of a transaction's products in one call")
    # Through the session when this is the transaction's first statement: that sends its BEGIN.
    driver = await begun_driver_connection(session)
    if driver is None:
        rows = _product_rows(await session.execute(_LOCK, {"ids": ids}))
    else:
        rows = _product_rows(await driver.fetch(_LOCK_ON_DRIVER.sql, *_LOCK_ON_DRIVER.arguments({"ids": ids})))
    session.info[_HIGHEST_LOCKED] = (session.sync_session.get_transaction(), ids[-1])
    return LockedStock(session, rows)


async def return_stock(session: AsyncSession, order_ids: Collection[uuid.UUID]) -> None:
    """Put the stock reserved by these (already locked) orders back, summed per product first."""
    if not order_ids:
        return
    quantities: Counter[uuid.UUID] = Counter()
    for product_id, quantity in await session.execute(_LINES_PER_PRODUCT, {"order_ids": list(order_ids)}):
        quantities[product_id] += int(quantity)
    locked = await lock_stock(session, quantities)
    await locked.change(quantities)


def _product_rows(rows: Iterable[Sequence[Any]]) -> list[ProductOut]:
    # PRODUCT_COLUMNS are ProductOut's fields in order: a locked row is the product as the catalog shows it
    return [ProductOut(*row) for row in rows]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
