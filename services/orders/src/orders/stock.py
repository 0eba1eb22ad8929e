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
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from sqlalchemy import any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from orders.models import LINES, PRODUCTS

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ("PRODUCT_COLUMNS", "LockedStock", "ProductRow", "lock_stock", "return_stock")

ProductRow: TypeAlias = "Row[*tuple[Any, ...]]"
"""A product row with every column of :data:`PRODUCT_COLUMNS`."""

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
_DELTAS = (
    func.unnest(
        bindparam("ids", type_=ARRAY(PRODUCTS.c.id.type)),
        bindparam("deltas", type_=ARRAY(PRODUCTS.c.stock.type)),
    )
    .table_valued("product_id", "delta")
    .render_derived(name="change")
)
# One UPDATE for every product: the rows are already locked by _LOCK in this transaction, so the
# order in which this statement visits them no longer matters.
_CHANGE = (
    PRODUCTS.update()
    .values(stock=PRODUCTS.c.stock + _DELTAS.c.delta, updated_at=bindparam("now"))
    .where(PRODUCTS.c.id == _DELTAS.c.product_id)
    .returning(*PRODUCT_COLUMNS)
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

    def __init__(self, session: AsyncSession, rows: Sequence[ProductRow]) -> None:
        self._session = session
        self.rows = rows
        """The locked products (every column of :data:`PRODUCT_COLUMNS`), in id order."""
        self._ids = frozenset(cast("uuid.UUID", row.id) for row in rows)

    async def change(self, deltas: Mapping[uuid.UUID, int]) -> Sequence[ProductRow]:
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
        result = await self._session.execute(_CHANGE, {"ids": ids, "deltas": [changes[i] for i in ids], "now": _now()})
        return result.all()


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
    rows = (await session.execute(_LOCK, {"ids": ids})).all()
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


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
