"""One way to ask for a page of a list: ``limit`` and ``offset``, bounded, for every list route.

``shared.app`` provides it to every handler as the ``page`` dependency; a list route declares
``page: NamedDependency[PageRequest]`` and gets both query parameters, documented and checked
(a value outside the bounds is a 400 naming the parameter, before any query runs). The answer is
a ``Page`` of the route's item type.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Generic, Self, TypeVar

import msgspec
from litestar.params import QueryParameter

__all__ = ("DEFAULT_PAGE_SIZE", "MAX_OFFSET", "MAX_PAGE_SIZE", "Page", "PageRequest", "provide_page_request")

ItemT = TypeVar("ItemT")

DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
MAX_OFFSET: Final = 10_000
"""Deepest offset a client may ask for. Postgres reads and throws away every skipped row, so an
unbounded offset is an unbounded query; and an offset past 2**63 does not even fit the column type
(500 before this bound). 10,000 rows is 100 pages of the largest size."""


class PageRequest(msgspec.Struct, frozen=True):
    """Which slice of a list the client asked for."""

    limit: int
    """How many items, 1 to ``MAX_PAGE_SIZE``."""
    offset: int
    """How many items to skip, 0 to ``MAX_OFFSET``."""


def provide_page_request(
    limit: Annotated[
        int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description="How many items to return.")
    ] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET, description="How many items to skip.")] = 0,
) -> PageRequest:
    """The ``page`` dependency: the bounded ``limit`` and ``offset`` query parameters."""
    return PageRequest(limit=limit, offset=offset)


class Page(msgspec.Struct, Generic[ItemT], frozen=True):
    """One page of a list: the items, how many match in all, and the slice that was asked for.

    Each list route answers a named subclass that states its items again::

        class ProductPage(Page[ProductOut], frozen=True):
            items: list[ProductOut]

    The name is what OpenAPI calls the schema (a bare ``Page[ProductOut]`` is named after its
    module path), and Litestar reads a subclass's fields without resolving the base's type
    variable, so without the restated ``items`` the document would say "array of object". A list
    with more to say adds fields there (notify's unread count).
    """

    items: list[ItemT]
    total: int
    """How many items match, over all pages."""
    limit: int
    offset: int

    @classmethod
    def of(cls, items: list[ItemT], *, total: int, request: PageRequest, **more: Any) -> Self:
        """The page of ``items`` for ``request``; ``more`` fills the fields a subclass adds (by name)."""
        return cls(items=items, total=total, limit=request.limit, offset=request.offset, **more)
