"""One page type for every list: its fields, its subclasses' extra fields, and its OpenAPI schema."""

from __future__ import annotations

import msgspec
from litestar import Litestar, get

from shared.pagination import Page, PageRequest


class Item(msgspec.Struct, frozen=True):
    id: int


class ItemPage(Page[Item], frozen=True):
    """One page of items."""

    items: list[Item]


class CountedItemPage(Page[Item], frozen=True):
    """One page of items and how many of them are new."""

    items: list[Item]
    new: int


def test_of_fills_the_slice_asked_for_and_a_subclass_s_own_fields() -> None:
    request = PageRequest(limit=2, offset=4)
    page = CountedItemPage.of([Item(5), Item(6)], total=9, request=request, new=1)
    assert msgspec.json.decode(msgspec.json.encode(page)) == {
        "items": [{"id": 5}, {"id": 6}],
        "total": 9,
        "limit": 2,
        "offset": 4,
        "new": 1,
    }


def test_a_named_page_keeps_its_name_and_its_item_schema_in_the_document() -> None:
    @get("/items", operation_id="listItems", sync_to_thread=False)
    def items() -> ItemPage:
        return ItemPage.of([], total=0, request=PageRequest(limit=1, offset=0))

    schemas = Litestar([items]).openapi_schema.to_schema()["components"]["schemas"]
    item_list = {"items": {"$ref": "#/components/schemas/Item"}, "type": "array"}
    assert schemas["ItemPage"]["properties"]["items"] == item_list
    assert sorted(schemas["ItemPage"]["required"]) == ["items", "limit", "offset", "total"]
