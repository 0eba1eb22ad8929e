"""State kept from another service's events: apply an event only when it is newer than what is held."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects.postgresql import insert

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ("upsert_if_newer",)


async def upsert_if_newer(
    session: AsyncSession, table: Table, *, key: dict[str, Any], values: dict[str, Any], sequence: int
) -> bool:
    """Insert the row, or update it only if ``sequence`` is newer than the stored one.

    Redelivery reorders events (a retried ``registered`` may arrive after ``deactivated``), so a
    replica row carries the aggregate's sequence and an older event never overwrites a newer state.
    The table needs a ``sequence`` column and a primary key over ``key``.

    Returns:
        Whether the row changed.
    """
    row = {**key, **values, "sequence": sequence}
    insert_row = insert(table).values(row)
    upsert = insert_row.on_conflict_do_update(
        index_elements=list(key),
        set_={name: insert_row.excluded[name] for name in [*values, "sequence"]},
        where=table.c.sequence < insert_row.excluded.sequence,
    ).returning(table.c.sequence)
    return (await session.execute(upsert)).first() is not None
