from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from tests.orders.helpers import Tokens, add_product, answer, outbox_types, place, stock_of

if TYPE_CHECKING:
    import httpx

ACTIONS = ("pay", "ship", "deliver", "cancel")
# Which action is legal from which state, and who performs it.
LEGAL = {
    "pending": {"pay": "paid", "cancel": "cancelled"},
    "paid": {"ship": "shipped", "cancel": "cancelled"},
    "shipped": {"deliver": "delivered"},
    "delivered": {},
    "cancelled": {},
}
PATH_TO = {
    "pending": [],
    "paid": ["pay"],
    "shipped": ["pay", "ship"],
    "delivered": ["pay", "ship", "deliver"],
    "cancelled": ["cancel"],
}


async def order_in_state(
    client: httpx.AsyncClient, tokens: Tokens, customer: dict[str, str], state: str
) -> dict[str, str]:
    product = await add_product(client, tokens, sku=f"P-{uuid.uuid4().hex[:8]}", stock=5)
    order = answer(await place(client, customer, [(product["id"], 2)]), 201)
    for action in PATH_TO[state]:
        answer(await act(client, tokens, customer, order["id"], action))
    return {"id": order["id"], "product_id": str(product["id"])}


async def act(
    client: httpx.AsyncClient, tokens: Tokens, customer: dict[str, str], order_id: str, action: str
) -> httpx.Response:
    headers = tokens.admin() if action in ("ship", "deliver") else customer
    return await client.post(f"/orders/{order_id}/{action}", headers=headers)


@pytest.mark.parametrize("state", list(LEGAL))
@pytest.mark.parametrize("action", ACTIONS)
async def test_every_transition_is_allowed_only_from_its_states(
    client: httpx.AsyncClient, tokens: Tokens, state: str, action: str
) -> None:
    user_id = uuid.uuid4()
    customer = tokens.customer(user_id)
    order = await order_in_state(client, tokens, customer, state)
    response = await act(client, tokens, customer, order["id"], action)
    if action in LEGAL[state]:
        assert response.status_code == 200, response.text
        assert response.json()["status"] == LEGAL[state][action]
    else:
        assert response.status_code == 409
        assert f"that is {state}" in response.json()["detail"]


async def test_cancelling_returns_the_stock_and_records_the_reason(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    customer = tokens.customer()
    order = await order_in_state(client, tokens, customer, "paid")
    assert await stock_of(orders_database, order["product_id"]) == 3
    cancelled = answer(await act(client, tokens, customer, order["id"], "cancel"))
    assert (cancelled["status"], cancelled["cancel_reason"]) == ("cancelled", "customer")
    assert await stock_of(orders_database, order["product_id"]) == 5
    assert await outbox_types(orders_database) == ["orders.order.placed", "orders.order.paid", "orders.order.cancelled"]


async def test_every_transition_writes_its_event(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    customer = tokens.customer()
    await order_in_state(client, tokens, customer, "delivered")
    assert await outbox_types(orders_database) == [
        "orders.order.placed",
        "orders.order.paid",
        "orders.order.shipped",
        "orders.order.delivered",
    ]


# Every route on one order, and what a customer who does not own it gets: the same answer as for an
# order that does not exist (ship and deliver refuse every customer before looking the order up).
STRANGER_ANSWERS = {
    ("GET", "/orders/{order_id}"): 404,
    ("POST", "/orders/{order_id}/pay"): 404,
    ("POST", "/orders/{order_id}/cancel"): 404,
    ("POST", "/orders/{order_id}/ship"): 403,
    ("POST", "/orders/{order_id}/deliver"): 403,
}


async def test_someone_elses_order_answers_exactly_like_a_missing_one_on_every_order_route(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    owner = tokens.customer()
    order = await order_in_state(client, tokens, owner, "paid")
    stranger = tokens.customer()
    paths = answer(await client.get("/docs/openapi.json"))["paths"]
    routes = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/orders/{order_id}")
        for method in operations
    }
    assert routes == set(STRANGER_ANSWERS)  # a new route on one order gets its line above

    for (method, path), status in STRANGER_ANSWERS.items():
        theirs = await client.request(method, path.format(order_id=order["id"]), headers=stranger)
        missing = await client.request(method, path.format(order_id=uuid.uuid4()), headers=stranger)
        assert theirs.status_code == missing.status_code == status, (method, path, theirs.text)
        assert theirs.headers["content-type"] == "application/problem+json"
        assert {**theirs.json(), "instance": None} == {**missing.json(), "instance": None}, (method, path)

    assert answer(await client.get(f"/orders/{order['id']}", headers=owner))["status"] == "paid"  # untouched
    assert await outbox_types(orders_database) == ["orders.order.placed", "orders.order.paid"]
    listing = answer(await client.get("/orders", headers=stranger))
    assert (listing["items"], listing["total"]) == ([], 0)


async def test_an_administrator_sees_and_cancels_anyones_order(client: httpx.AsyncClient, tokens: Tokens) -> None:
    order = await order_in_state(client, tokens, tokens.customer(), "paid")
    assert answer(await client.get(f"/orders/{order['id']}", headers=tokens.admin()))["id"] == order["id"]
    cancelled = answer(await client.post(f"/orders/{order['id']}/cancel", headers=tokens.admin()))
    assert (cancelled["status"], cancelled["cancel_reason"]) == ("cancelled", "admin")


async def test_only_admins_ship_and_deliver(client: httpx.AsyncClient, tokens: Tokens) -> None:
    customer = tokens.customer()
    order = await order_in_state(client, tokens, customer, "paid")
    assert (await client.post(f"/orders/{order['id']}/ship", headers=customer)).status_code == 403


async def test_admin_cannot_pay_for_a_customer(client: httpx.AsyncClient, tokens: Tokens) -> None:
    order = await order_in_state(client, tokens, tokens.customer(), "pending")
    assert (await client.post(f"/orders/{order['id']}/pay", headers=tokens.admin())).status_code == 403


async def test_order_routes_need_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/orders")).status_code == 401
    assert (await client.post("/orders", json={"items": []}, headers={"Idempotency-Key": "k"})).status_code == 401


async def test_customer_lists_own_orders_newest_first_and_admin_lists_all_filtered(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    alice_id, bob_id = uuid.uuid4(), uuid.uuid4()
    alice, bob = tokens.customer(alice_id), tokens.customer(bob_id)
    first = await order_in_state(client, tokens, alice, "pending")
    second = await order_in_state(client, tokens, alice, "paid")
    await order_in_state(client, tokens, bob, "pending")

    mine = (await client.get("/orders", headers=alice)).json()
    assert [item["id"] for item in mine["items"]] == [second["id"], first["id"]]
    assert mine["total"] == 2
    everyone = (await client.get("/orders", headers=tokens.admin())).json()
    assert everyone["total"] == 3
    bobs = (await client.get("/orders", params={"user_id": str(bob_id)}, headers=tokens.admin())).json()
    assert {item["user_id"] for item in bobs["items"]} == {str(bob_id)}
    paid = (await client.get("/orders", params={"status": "paid"}, headers=tokens.admin())).json()
    assert [item["id"] for item in paid["items"]] == [second["id"]]
    ignored = (await client.get("/orders", params={"user_id": str(bob_id)}, headers=alice)).json()
    assert ignored["total"] == 2  # a customer's filter never widens their view
    page = (await client.get("/orders", params={"limit": 1, "offset": 1}, headers=tokens.admin())).json()
    assert (len(page["items"]), page["total"]) == (1, 3)
