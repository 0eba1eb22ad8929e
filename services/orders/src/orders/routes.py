"""The orders HTTP API: parse, authorize, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Response
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from orders.schemas import (
    OrderOut,
    OrderPage,
    OrderStatus,
    PlaceOrder,
    ProductCreate,
    ProductOut,
    ProductPage,
    ProductUpdate,
    Restock,
)
from orders.service import CatalogService, OrderService
from shared.auth import CurrentUser, Principal, admin_only, signed_in
from shared.errors import Conflict, Forbidden, Unprocessable
from shared.pagination import PageRequest

__all__ = ("OrderController", "ProductController")

Catalog = NamedDependency[CatalogService]
Orders = NamedDependency[OrderService]
Caller = Request[Principal | None, Any, Any]
"""A request on a public route: ``request.user`` is the signed-in caller, or None."""


class ProductController(Controller):
    """The catalog: public reads, writes for administrators."""

    path = "/products"
    tags = ["catalog"]

    @get("/", operation_id="listProducts")
    async def list_products(
        self,
        request: Caller,
        catalog: Catalog,
        page: NamedDependency[PageRequest],
        q: Annotated[str | None, QueryParameter(max_length=100, description="Search name and SKU.")] = None,
        active: Annotated[
            bool | None, QueryParameter(description="Administrators may list inactive products (false) or all (omit).")
        ] = None,
    ) -> ProductPage:
        """Products by name. Everyone else sees active products only."""
        shown = active if request.user is not None and request.user.is_admin else True
        return await catalog.list_products(search=q, active=shown, request=page)

    @get("/{product_id:uuid}", operation_id="getProduct")
    async def show_product(self, request: Caller, product_id: FromPath[uuid.UUID], catalog: Catalog) -> ProductOut:
        """One product (an inactive one only for administrators)."""
        return await catalog.get(product_id, include_inactive=request.user is not None and request.user.is_admin)

    @post(
        "/", status_code=HTTP_201_CREATED, guards=[admin_only], operation_id="createProduct", domain_errors=(Conflict,)
    )
    async def create_product(self, data: JSONBody[ProductCreate], catalog: Catalog) -> ProductOut:
        """Add a product (the SKU must be new)."""
        return await catalog.create(data)

    @patch("/{product_id:uuid}", guards=[admin_only], operation_id="updateProduct")
    async def update_product(
        self, product_id: FromPath[uuid.UUID], data: JSONBody[ProductUpdate], catalog: Catalog
    ) -> ProductOut:
        """Change name, description, price or active flag."""
        return await catalog.update(product_id, data)

    # An action, not DELETE: the product stays (orders keep it, administrators still read it), so a
    # DELETE would promise clients a removal that never happens.
    @post(
        "/{product_id:uuid}/deactivate",
        status_code=HTTP_200_OK,
        guards=[admin_only],
        operation_id="deactivateProduct",
    )
    async def deactivate_product(self, product_id: FromPath[uuid.UUID], catalog: Catalog) -> ProductOut:
        """Take a product off sale (orders already placed keep it; ``PATCH`` ``is_active`` puts it back)."""
        return await catalog.update(product_id, ProductUpdate(is_active=False))

    @post(
        "/{product_id:uuid}/restock",
        status_code=HTTP_200_OK,
        guards=[admin_only],
        operation_id="restockProduct",
    )
    async def restock_product(
        self, product_id: FromPath[uuid.UUID], data: JSONBody[Restock], catalog: Catalog
    ) -> ProductOut:
        """Add units to the stock."""
        return await catalog.restock(product_id, data.quantity)


class OrderController(Controller):
    """Orders: placing them, reading them, moving them along."""

    path = "/orders"
    tags = ["orders"]
    guards = [signed_in]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        responses={
            201: ResponseSpec(data_container=OrderOut, description="The order (the first answer again on a replay)")
        },
        operation_id="placeOrder",
        domain_errors=(Forbidden, Conflict, Unprocessable),
    )
    async def place_order(
        self,
        data: JSONBody[PlaceOrder],
        user: CurrentUser,
        orders: Orders,
        idempotency_key: Annotated[
            str,
            HeaderParameter(
                name="Idempotency-Key",
                min_length=1,
                max_length=255,
                description="Repeat the same request with the same key to get the first answer again.",
            ),
        ],
    ) -> Response[bytes]:
        """Place an order, pricing it from the catalog and reserving its stock."""
        placed = await orders.place(user, data, idempotency_key=idempotency_key)
        headers = {"Idempotent-Replayed": "true"} if placed.replayed else {}
        return Response(placed.body, status_code=placed.status_code, media_type="application/json", headers=headers)

    @get("/", operation_id="listOrders")
    async def list_orders(
        self,
        user: CurrentUser,
        orders: Orders,
        page: NamedDependency[PageRequest],
        status: Annotated[OrderStatus | None, QueryParameter()] = None,
        user_id: Annotated[
            uuid.UUID | None, QueryParameter(description="Administrators: one customer's orders.")
        ] = None,
    ) -> OrderPage:
        """Your orders, newest first (administrators: everyone's, filtered)."""
        return await orders.list_orders(user, owner=user_id, status=status, request=page)

    @get("/{order_id:uuid}", operation_id="getOrder")
    async def show_order(self, order_id: FromPath[uuid.UUID], user: CurrentUser, orders: Orders) -> OrderOut:
        """One order (yours, or any for administrators)."""
        return await orders.get(user, order_id)

    @post("/{order_id:uuid}/pay", status_code=HTTP_200_OK, operation_id="payOrder", domain_errors=(Forbidden, Conflict))
    async def pay_order(self, order_id: FromPath[uuid.UUID], user: CurrentUser, orders: Orders) -> OrderOut:
        """Pay your pending order."""
        return await orders.act(user, order_id, "pay")

    @post("/{order_id:uuid}/cancel", status_code=HTTP_200_OK, operation_id="cancelOrder", domain_errors=(Conflict,))
    async def cancel_order(self, order_id: FromPath[uuid.UUID], user: CurrentUser, orders: Orders) -> OrderOut:
        """Cancel your pending or paid order; its stock returns to the catalog."""
        return await orders.act(user, order_id, "cancel")

    @post(
        "/{order_id:uuid}/ship",
        status_code=HTTP_200_OK,
        guards=[admin_only],
        operation_id="shipOrder",
        domain_errors=(Conflict,),
    )
    async def ship_order(self, order_id: FromPath[uuid.UUID], user: CurrentUser, orders: Orders) -> OrderOut:
        """Mark a paid order shipped (administrators)."""
        return await orders.act(user, order_id, "ship")

    @post(
        "/{order_id:uuid}/deliver",
        status_code=HTTP_200_OK,
        guards=[admin_only],
        operation_id="deliverOrder",
        domain_errors=(Conflict,),
    )
    async def deliver_order(self, order_id: FromPath[uuid.UUID], user: CurrentUser, orders: Orders) -> OrderOut:
        """Mark a shipped order delivered (administrators)."""
        return await orders.act(user, order_id, "deliver")
