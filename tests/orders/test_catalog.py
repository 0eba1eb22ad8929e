from __future__ import annotations

from typing import TYPE_CHECKING

from tests.orders.helpers import Tokens, add_product, answer

if TYPE_CHECKING:
    import httpx


async def test_admin_creates_updates_restocks_and_deactivates_products(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    product = await add_product(client, tokens, sku="MUG-1", price=1250, stock=3)
    assert (product["price"], product["stock"], product["currency"]) == (1250, 3, "EUR")
    product_id = product["id"]

    updated = await client.patch(
        f"/products/{product_id}", json={"price": 1500, "name": "Big mug"}, headers=tokens.admin()
    )
    assert (answer(updated)["price"], answer(updated)["name"]) == (1500, "Big mug")
    restocked = await client.post(f"/products/{product_id}/restock", json={"quantity": 7}, headers=tokens.admin())
    assert answer(restocked)["stock"] == 10
    # the locked row it answers with is the product as the catalog shows it, field for field
    assert answer(restocked) == answer(await client.get(f"/products/{product_id}", headers=tokens.admin()))
    deactivated = await client.post(f"/products/{product_id}/deactivate", headers=tokens.admin())
    assert deactivated.status_code == 200
    assert deactivated.json()["is_active"] is False

    assert (await client.get(f"/products/{product_id}")).status_code == 404
    stored = answer(await client.get(f"/products/{product_id}", headers=tokens.admin()))  # a later request: committed
    assert (stored["name"], stored["price"], stored["stock"], stored["is_active"]) == ("Big mug", 1500, 10, False)


async def test_catalog_writes_are_for_admins_only(client: httpx.AsyncClient, tokens: Tokens) -> None:
    product = await add_product(client, tokens, sku="PEN-1")
    body = {"sku": "X-1", "name": "X", "price": 1, "currency": "EUR"}
    assert (await client.post("/products", json=body)).status_code == 401
    assert (await client.post("/products", json=body, headers=tokens.customer())).status_code == 403
    restock = await client.post(f"/products/{product['id']}/restock", json={"quantity": 1}, headers=tokens.customer())
    assert restock.status_code == 403


async def test_duplicate_sku_is_a_conflict(client: httpx.AsyncClient, tokens: Tokens) -> None:
    await add_product(client, tokens, sku="SKU-1")
    response = await client.post(
        "/products", json={"sku": "SKU-1", "name": "Again", "price": 1, "currency": "EUR"}, headers=tokens.admin()
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


async def test_bad_product_input_is_a_client_error(client: httpx.AsyncClient, tokens: Tokens) -> None:
    for body in (
        {"sku": "A", "name": "A", "price": -1, "currency": "EUR"},
        {"sku": "A", "name": "A", "price": 1, "currency": "euro"},
        {"sku": "A", "name": "A", "price": 1, "currency": "EUR", "stock": -5},
        {"sku": "bad sku!", "name": "A", "price": 1, "currency": "EUR"},
    ):
        response = await client.post("/products", json=body, headers=tokens.admin())
        assert response.status_code == 400, body
    product = await add_product(client, tokens, sku="R-1")
    zero = await client.post(f"/products/{product['id']}/restock", json={"quantity": 0}, headers=tokens.admin())
    assert zero.status_code == 400


async def test_public_listing_shows_active_products_searchable_and_paginated(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await add_product(client, tokens, sku="TEA-GREEN")
    await add_product(client, tokens, sku="TEA-BLACK")
    await add_product(client, tokens, sku="COFFEE")
    await add_product(client, tokens, sku="TEA-OLD", is_active=False)

    page = (await client.get("/products", params={"limit": 2})).json()
    assert (page["total"], len(page["items"])) == (3, 2)
    tea = (await client.get("/products", params={"q": "tea"})).json()
    assert sorted(item["sku"] for item in tea["items"]) == ["TEA-BLACK", "TEA-GREEN"]
    asked_inactive = (await client.get("/products", params={"active": "false"})).json()
    assert all(item["is_active"] for item in asked_inactive["items"])  # the public never sees inactive ones
    admin_inactive = (await client.get("/products", params={"active": "false"}, headers=tokens.admin())).json()
    assert [item["sku"] for item in admin_inactive["items"]] == ["TEA-OLD"]
