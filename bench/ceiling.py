"""The ceiling of ``bench/http.py``: the same endpoints as a bare ASGI app on granian with raw asyncpg.

No framework, no ORM, no middleware: the path is split by hand, each endpoint sends the fewest
statements that give the same answer (prepared by asyncpg once per connection), JSON is encoded by
msgspec, and the EdDSA access token is verified with ``cryptography`` directly (signature, issuer,
audience, expiry) and the caller looked up in the service's replica, as the project does. It is
what the hardware, Postgres and the Python HTTP server allow: the project's distance to it is what
its layers cost. Served by granian with the project's settings (``--interface asgi``, one worker).

Settings: the same ``BENCH_*`` variables as ``bench/peer.py``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import os
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from uuid_utils.compat import uuid7

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

__all__ = ("app",)

ACCESS_TOKEN_SECONDS = 900
POOL_SIZE = 10

PRODUCT = (
    "SELECT id, sku, name, description, price, currency, stock, is_active, created_at, updated_at"
    " FROM orders.product WHERE id = $1 AND is_active"
)
ORDER = (
    "SELECT id, user_id, status, total, currency, cancel_reason, created_at, updated_at"
    " FROM orders.customer_order WHERE id = $1"
)
LINES = (
    "SELECT product_id, sku, name, unit_price, quantity, unit_price * quantity AS line_total"
    " FROM orders.order_line WHERE order_id = $1 ORDER BY product_id"
)
ORDERS_USER = "SELECT is_active, tokens_valid_after FROM orders.known_user WHERE user_id = $1"
NOTIFY_USER = "SELECT is_active, tokens_valid_after FROM notify.contact WHERE user_id = $1"
NOTIFICATIONS = (
    "SELECT id, kind, title, body, created_at, read_at FROM notify.notification"
    " WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3"
)
NOTIFICATION_COUNTS = (
    "SELECT count(*), count(*) FILTER (WHERE read_at IS NULL) FROM notify.notification WHERE user_id = $1"
)
CLAIM_KEY = (
    "INSERT INTO orders.idempotency_key (user_id, key, request_hash, created_at, expires_at)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING key"
)
PREVIOUS_ANSWER = (
    "SELECT request_hash, response_body FROM orders.idempotency_key WHERE user_id = $1 AND key = $2 FOR UPDATE"
)
LOCK_PRODUCTS = (
    "SELECT id, sku, name, price, currency, stock, is_active FROM orders.product"
    " WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
)
TAKE_STOCK = (
    "UPDATE orders.product AS p SET stock = p.stock - t.quantity"
    " FROM unnest($1::uuid[], $2::bigint[]) AS t(id, quantity) WHERE p.id = t.id"
)
INSERT_ORDER = (
    "INSERT INTO orders.customer_order (id, user_id, status, total, currency, version, created_at, updated_at)"
    " VALUES ($1, $2, 'pending', $3, $4, 1, $5, $5)"
)
INSERT_LINES = (
    "INSERT INTO orders.order_line (id, order_id, product_id, sku, name, unit_price, quantity)"
    " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::int[])"
)
INSERT_EVENT = "INSERT INTO orders.outbox (id, subject, body, headers) VALUES ($1, $2, $3, '{}'::jsonb)"
STORE_ANSWER = "UPDATE orders.idempotency_key SET status_code = 201, response_body = $3 WHERE user_id = $1 AND key = $2"
LOGIN_USER = "SELECT id, password_hash, role, is_active FROM users.user_account WHERE email = $1"
INSERT_REFRESH = (
    "INSERT INTO users.refresh_token (id, user_id, family_id, token_hash, issued_at, expires_at)"
    " VALUES ($1, $2, $3, $4, $5, $6)"
)


TOKEN_HEADER = base64.urlsafe_b64encode(b'{"alg":"EdDSA","typ":"JWT"}').rstrip(b"=").decode()


class Item(msgspec.Struct, forbid_unknown_fields=True):
    product_id: uuid.UUID
    quantity: int


class PlaceOrder(msgspec.Struct, forbid_unknown_fields=True):
    items: list[Item]


class Login(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    password: str


class Claims(msgspec.Struct):
    iss: str
    aud: list[str]
    sub: uuid.UUID
    exp: int
    iat: int
    roles: list[str] = []


class Problem(Exception):
    def __init__(self, status: int, title: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Ceiling:
    """The app's state: pools per service role, keys; built on the first request's loop."""

    def __init__(self) -> None:
        self.pools: dict[str, asyncpg.Pool] = {}
        public = serialization.load_pem_public_key(os.environ["BENCH_JWT_PUBLIC_KEY"].encode())
        private = serialization.load_pem_private_key(os.environ["BENCH_JWT_PRIVATE_KEY"].encode(), password=None)
        assert isinstance(public, Ed25519PublicKey)
        assert isinstance(private, Ed25519PrivateKey)
        self.public_key, self.private_key = public, private
        self.hasher = PasswordHasher()
        self.claims = msgspec.json.Decoder(Claims)
        self.encoder = msgspec.json.Encoder()

    async def start(self) -> None:
        for service in ("users", "orders", "notify"):
            dsn = os.environ[f"BENCH_{service.upper()}_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
            self.pools[service] = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE)

    async def stop(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self.pools.values()))

    def verify(self, scope: Scope, audience: str) -> Claims:
        header = dict(scope["headers"]).get(b"authorization", b"").decode()
        scheme, _, token = header.partition(" ")
        try:
            head, body, signature = token.split(".")
            self.public_key.verify(_b64(signature), f"{head}.{body}".encode())
            claims = self.claims.decode(_b64(body))
        except Exception as error:
            raise Problem(401, "Invalid token") from error
        if (
            scheme.lower() != "bearer"
            or claims.iss != "users"
            or audience not in claims.aud
            or claims.exp < time.time()
        ):
            raise Problem(401, "Invalid token")
        return claims

    async def caller(self, connection: asyncpg.Connection, query: str, claims: Claims) -> None:
        row = await connection.fetchrow(query, claims.sub)
        valid_after = None if row is None else row["tokens_valid_after"]
        if row is None or not row["is_active"] or (valid_after is not None and claims.iat < valid_after.timestamp()):
            raise Problem(401, "Unknown user")

    async def product(self, product_id: str) -> tuple[int, bytes]:
        async with self.pools["orders"].acquire() as connection:
            row = await connection.fetchrow(PRODUCT, uuid.UUID(product_id))
        if row is None:
            raise Problem(404, "No such product")
        return 200, self.encoder.encode(dict(row))

    async def order(self, scope: Scope, order_id: str) -> tuple[int, bytes]:
        claims = self.verify(scope, "orders")
        async with self.pools["orders"].acquire() as connection:
            await self.caller(connection, ORDERS_USER, claims)
            row = await connection.fetchrow(ORDER, uuid.UUID(order_id))
            if row is None or row["user_id"] != claims.sub:
                raise Problem(404, "No such order")
            lines = await connection.fetch(LINES, row["id"])
        return 200, self.encoder.encode(dict(row) | {"lines": [dict(line) for line in lines]})

    async def place(self, scope: Scope, body: bytes) -> tuple[int, bytes]:
        claims = self.verify(scope, "orders")
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()
        if not key:
            raise Problem(400, "Idempotency-Key missing")
        try:
            order = msgspec.json.decode(body, type=PlaceOrder)
        except msgspec.ValidationError as error:
            raise Problem(400, str(error)) from error
        quantities = {item.product_id: item.quantity for item in order.items}
        request_hash = hashlib.sha256(body).hexdigest()
        now = datetime.datetime.now(datetime.UTC)
        async with self.pools["orders"].acquire() as connection, connection.transaction():
            await self.caller(connection, ORDERS_USER, claims)
            claimed = await connection.fetchval(
                CLAIM_KEY, claims.sub, key, request_hash, now, now + datetime.timedelta(days=1)
            )
            if claimed is None:
                previous = await connection.fetchrow(PREVIOUS_ANSWER, claims.sub, key)
                if previous is None or previous["request_hash"] != request_hash or previous["response_body"] is None:
                    raise Problem(422, "Idempotency-Key reused")
                return 201, bytes(previous["response_body"])
            products = await connection.fetch(LOCK_PRODUCTS, list(quantities))
            if len(products) != len(quantities) or not all(product["is_active"] for product in products):
                raise Problem(422, "Unknown products")
            if any(product["stock"] < quantities[product["id"]] for product in products):
                raise Problem(409, "Not enough stock")
            ids = [product["id"] for product in products]
            wanted = [quantities[product_id] for product_id in ids]
            await connection.execute(TAKE_STOCK, ids, wanted)
            order_id = uuid7()
            lines = [
                {
                    "product_id": product["id"],
                    "sku": product["sku"],
                    "name": product["name"],
                    "unit_price": product["price"],
                    "quantity": quantities[product["id"]],
                    "line_total": product["price"] * quantities[product["id"]],
                }
                for product in products
            ]
            total = sum(line["line_total"] for line in lines)
            currency = products[0]["currency"]
            await connection.execute(INSERT_ORDER, order_id, claims.sub, total, currency, now)
            await connection.execute(
                INSERT_LINES,
                [uuid7() for _ in lines],
                [order_id] * len(lines),
                ids,
                [line["sku"] for line in lines],
                [line["name"] for line in lines],
                [line["unit_price"] for line in lines],
                wanted,
            )
            answer = {
                "id": order_id,
                "user_id": claims.sub,
                "status": "pending",
                "lines": lines,
                "total": total,
                "currency": currency,
                "cancel_reason": None,
                "created_at": now,
                "updated_at": now,
            }
            encoded = self.encoder.encode(answer)
            event = self.encoder.encode({"type": "orders.order.placed", "subject": order_id, "data": answer})
            await connection.execute(INSERT_EVENT, uuid7(), "orders.order.placed", event)
            await connection.execute(STORE_ANSWER, claims.sub, key, encoded)
        return 201, encoded

    async def notifications(self, scope: Scope) -> tuple[int, bytes]:
        claims = self.verify(scope, "notify")
        limit, offset = 20, 0
        async with self.pools["notify"].acquire() as connection:
            await self.caller(connection, NOTIFY_USER, claims)
            rows = await connection.fetch(NOTIFICATIONS, claims.sub, limit, offset)
            total, unread = await connection.fetchrow(NOTIFICATION_COUNTS, claims.sub)
        page = {"items": [dict(row) for row in rows], "total": total, "unread": unread, "limit": limit}
        return 200, self.encoder.encode(page | {"offset": offset})

    async def login(self, body: bytes) -> tuple[int, bytes]:
        try:
            data = msgspec.json.decode(body, type=Login)
        except msgspec.ValidationError as error:
            raise Problem(400, str(error)) from error
        async with self.pools["users"].acquire() as connection:
            user = await connection.fetchrow(LOGIN_USER, data.email.strip().lower())
        if user is None or not user["is_active"]:
            raise Problem(401, "Wrong email or password")
        try:
            await asyncio.to_thread(self.hasher.verify, user["password_hash"], data.password)
        except VerificationError:
            raise Problem(401, "Wrong email or password") from None
        now = datetime.datetime.now(datetime.UTC)
        refresh = secrets.token_urlsafe(32)
        async with self.pools["users"].acquire() as connection:
            await connection.execute(
                INSERT_REFRESH,
                uuid7(),
                user["id"],
                uuid7(),
                hashlib.sha256(refresh.encode()).hexdigest(),
                now,
                now + datetime.timedelta(days=30),
            )
        issued = int(now.timestamp())
        claims = {
            "iss": "users",
            "aud": ["users", "orders", "notify"],
            "sub": user["id"],
            "roles": [user["role"]],
            "iat": issued,
            "exp": issued + ACCESS_TOKEN_SECONDS,
            "jti": uuid.uuid4(),
        }
        signing_input = f"{TOKEN_HEADER}.{_b64e(self.encoder.encode(claims))}"
        token = f"{signing_input}.{_b64e(self.private_key.sign(signing_input.encode()))}"
        answer = {"access_token": token, "refresh_token": refresh, "expires_in": ACCESS_TOKEN_SECONDS}
        return 200, self.encoder.encode(answer | {"token_type": "bearer"})

    async def route(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        method, path = scope["method"], scope["path"]
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 2 and parts[0] == "products":  # noqa: PLR2004
            return await self.product(parts[1])
        if method == "GET" and len(parts) == 2 and parts[0] == "orders":  # noqa: PLR2004
            return await self.order(scope, parts[1])
        if method == "POST" and path == "/orders":
            return await self.place(scope, await read_body(receive))
        if method == "GET" and path == "/notifications":
            return await self.notifications(scope)
        if method == "POST" and path == "/auth/login":
            return await self.login(await read_body(receive))
        if method == "GET" and path == "/ping":
            return 200, b'{"ok":true}'
        raise Problem(404, "Not found")


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


ceiling = Ceiling()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await ceiling.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await ceiling.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    try:
        status, body = await ceiling.route(scope, receive)
        content_type = b"application/json"
    except Problem as problem:
        status, body = problem.status, msgspec.json.encode({"status": problem.status, "title": problem.title})
        content_type = b"application/problem+json"
    except ValueError:  # a malformed id
        status, body, content_type = 404, b'{"status":404,"title":"Not found"}', b"application/problem+json"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
