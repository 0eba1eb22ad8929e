"""The peer of ``bench/http.py``: the same endpoints written the way the FastAPI + SQLAlchemy guides teach.

FastAPI with pydantic models, an async SQLAlchemy ORM session per request (``Depends(get_session)``),
ORM classes declared here over the services' own tables, PyJWT verifying the users service's EdDSA
access token, and a ``get_current_user`` dependency that loads the caller from the database, served
by uvicorn (one process, uvloop, httptools). Nothing from the services is imported: this
is what a team starting from the tutorials would have written. Same Postgres, same tables, same
rows, same answers (``tests/bench/test_http_peers.py`` compares them with the project's).

Settings come from ``BENCH_*`` variables (``bench/http.py`` sets them): ``BENCH_USERS_DATABASE_URL``,
``BENCH_ORDERS_DATABASE_URL``, ``BENCH_NOTIFY_DATABASE_URL`` (each service's own role),
``BENCH_JWT_PUBLIC_KEY`` and ``BENCH_JWT_PRIVATE_KEY`` (PEM; the peer's sign-in issues tokens too).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator  # noqa: TC003 - FastAPI reads annotations at run time
from typing import Annotated, Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from fastapi import Depends, FastAPI, Header, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, Text, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from uuid_utils.compat import uuid7

__all__ = ("app",)

ACCESS_TOKEN_SECONDS = 900


# --- models: the services' tables, declared the ORM way -------------------------------------------


class Base(DeclarativeBase):
    type_annotation_map = {datetime.datetime: DateTime(timezone=True)}  # the columns are timestamptz


class Product(Base):
    __tablename__ = "product"
    __table_args__ = {"schema": "orders"}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    price: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    stock: Mapped[int] = mapped_column(BigInteger)
    is_active: Mapped[bool]
    created_at: Mapped[datetime.datetime]
    updated_at: Mapped[datetime.datetime]


class Order(Base):
    __tablename__ = "customer_order"
    __table_args__ = {"schema": "orders"}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    cancel_reason: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime.datetime]
    updated_at: Mapped[datetime.datetime]
    lines: Mapped[list[OrderLine]] = relationship(order_by="OrderLine.product_id", lazy="raise")


class OrderLine(Base):
    __tablename__ = "order_line"
    __table_args__ = {"schema": "orders"}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.customer_order.id"))
    product_id: Mapped[uuid.UUID]
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    unit_price: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int]


class KnownUser(Base):
    __tablename__ = "known_user"
    __table_args__ = {"schema": "orders"}

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    is_active: Mapped[bool]
    tokens_valid_after: Mapped[datetime.datetime | None]


class IdempotencyKey(Base):
    __tablename__ = "idempotency_key"
    __table_args__ = {"schema": "orders"}

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime.datetime]
    expires_at: Mapped[datetime.datetime]


class OutboxEvent(Base):
    __tablename__ = "outbox"
    __table_args__ = {"schema": "orders"}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)


class Contact(Base):
    __tablename__ = "contact"
    __table_args__ = {"schema": "notify"}

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    is_active: Mapped[bool]
    tokens_valid_after: Mapped[datetime.datetime | None]


class Notification(Base):
    __tablename__ = "notification"
    __table_args__ = {"schema": "notify"}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime.datetime]
    read_at: Mapped[datetime.datetime | None]


class UserAccount(Base):
    __tablename__ = "user_account"
    __table_args__ = {"schema": "users"}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    is_active: Mapped[bool]


class RefreshToken(Base):
    __tablename__ = "refresh_token"
    __table_args__ = {"schema": "users"}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID]
    family_id: Mapped[uuid.UUID]
    token_hash: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime.datetime]
    expires_at: Mapped[datetime.datetime]


# --- schemas ----------------------------------------------------------------------------------------


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    sku: str
    name: str
    description: str
    price: int
    currency: str
    stock: int
    is_active: bool
    created_at: datetime.datetime
    updated_at: datetime.datetime


class OrderLineOut(BaseModel):
    product_id: uuid.UUID
    sku: str
    name: str
    unit_price: int
    quantity: int
    line_total: int


class OrderOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    status: str
    lines: list[OrderLineOut]
    total: int
    currency: str
    cancel_reason: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime

    @classmethod
    def from_order(cls, order: Order) -> OrderOut:
        return cls(
            id=order.id,
            user_id=order.user_id,
            status=order.status,
            lines=[
                OrderLineOut(
                    product_id=line.product_id,
                    sku=line.sku,
                    name=line.name,
                    unit_price=line.unit_price,
                    quantity=line.quantity,
                    line_total=line.unit_price * line.quantity,
                )
                for line in order.lines
            ],
            total=order.total,
            currency=order.currency,
            cancel_reason=order.cancel_reason,
            created_at=order.created_at,
            updated_at=order.updated_at,
        )


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: uuid.UUID
    quantity: int = Field(ge=1, le=1000)


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[OrderItem] = Field(min_length=1, max_length=50)


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    title: str
    body: str
    created_at: datetime.datetime
    read_at: datetime.datetime | None = None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    total: int
    unread: int
    limit: int
    offset: int


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=254)
    password: str = Field(max_length=128)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret


# --- database and auth dependencies -------------------------------------------------------------------


def _engine(variable: str) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(create_async_engine(os.environ[variable]), expire_on_commit=False)


users_sessions = _engine("BENCH_USERS_DATABASE_URL")
orders_sessions = _engine("BENCH_ORDERS_DATABASE_URL")
notify_sessions = _engine("BENCH_NOTIFY_DATABASE_URL")
PUBLIC_KEY = os.environ["BENCH_JWT_PUBLIC_KEY"]
PRIVATE_KEY = os.environ["BENCH_JWT_PRIVATE_KEY"]
password_hasher = PasswordHasher()
bearer = HTTPBearer()


async def orders_session() -> AsyncIterator[AsyncSession]:
    async with orders_sessions() as session:
        yield session


async def notify_session() -> AsyncIterator[AsyncSession]:
    async with notify_sessions() as session:
        yield session


async def users_session() -> AsyncIterator[AsyncSession]:
    async with users_sessions() as session:
        yield session


def token_claims(audience: str, credentials: HTTPAuthorizationCredentials) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            credentials.credentials, PUBLIC_KEY, algorithms=["EdDSA"], audience=audience, issuer="users"
        )
    except jwt.InvalidTokenError as error:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid token") from error
    return claims


def _still_valid(claims: dict[str, Any], valid_after: datetime.datetime | None) -> bool:
    return valid_after is None or claims["iat"] >= valid_after.timestamp()


async def orders_user(
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
    session: Annotated[AsyncSession, Depends(orders_session)],
) -> KnownUser:
    claims = token_claims("orders", credentials)
    user = await session.get(KnownUser, uuid.UUID(claims["sub"]))
    if user is None or not user.is_active or not _still_valid(claims, user.tokens_valid_after):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Unknown user")
    return user


async def notify_user(
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
    session: Annotated[AsyncSession, Depends(notify_session)],
) -> Contact:
    claims = token_claims("notify", credentials)
    user = await session.get(Contact, uuid.UUID(claims["sub"]))
    if user is None or not user.is_active or not _still_valid(claims, user.tokens_valid_after):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Unknown user")
    return user


# --- routes ---------------------------------------------------------------------------------------------

app = FastAPI(title="Relay Shop peer")


@app.get("/products/{product_id}")
async def get_product(product_id: uuid.UUID, session: Annotated[AsyncSession, Depends(orders_session)]) -> ProductOut:
    product = await session.get(Product, product_id)
    if product is None or not product.is_active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such product")
    return ProductOut.model_validate(product)


@app.get("/orders/{order_id}")
async def get_order(
    order_id: uuid.UUID,
    user: Annotated[KnownUser, Depends(orders_user)],
    session: Annotated[AsyncSession, Depends(orders_session)],
) -> OrderOut:
    order = await session.scalar(select(Order).where(Order.id == order_id).options(selectinload(Order.lines)))
    if order is None or order.user_id != user.user_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such order")
    return OrderOut.from_order(order)


@app.post("/orders", status_code=status.HTTP_201_CREATED)
async def place_order(
    data: PlaceOrder,
    user: Annotated[KnownUser, Depends(orders_user)],
    session: Annotated[AsyncSession, Depends(orders_session)],
    idempotency_key: Annotated[str, Header(max_length=255)],
) -> OrderOut:
    now = datetime.datetime.now(datetime.UTC)
    request_hash = hashlib.sha256(data.model_dump_json().encode()).hexdigest()
    key = IdempotencyKey(
        user_id=user.user_id,
        key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        expires_at=now + datetime.timedelta(days=1),
    )
    session.add(key)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        previous = await session.get(IdempotencyKey, (user.user_id, idempotency_key))
        if previous is None or previous.request_hash != request_hash or previous.response_body is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "Idempotency-Key reused") from None
        return OrderOut.model_validate_json(previous.response_body)
    quantities = {item.product_id: item.quantity for item in data.items}
    products = (
        await session.scalars(select(Product).where(Product.id.in_(quantities)).order_by(Product.id).with_for_update())
    ).all()
    if len(products) != len(quantities) or not all(product.is_active for product in products):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "Unknown products")
    if any(product.stock < quantities[product.id] for product in products):
        raise HTTPException(status.HTTP_409_CONFLICT, "Not enough stock")
    order = Order(
        id=uuid7(),
        user_id=user.user_id,
        status="pending",
        total=sum(product.price * quantities[product.id] for product in products),
        currency=products[0].currency,
        cancel_reason=None,
        version=1,
        created_at=now,
        updated_at=now,
        lines=[],
    )
    for product in products:
        product.stock -= quantities[product.id]
        order.lines.append(
            OrderLine(
                id=uuid7(),
                product_id=product.id,
                sku=product.sku,
                name=product.name,
                unit_price=product.price,
                quantity=quantities[product.id],
            )
        )
    session.add(order)
    answer = OrderOut.from_order(order)
    event = {"type": "orders.order.placed", "subject": str(order.id), "data": answer.model_dump(mode="json")}
    session.add(OutboxEvent(id=uuid7(), subject="orders.order.placed", body=json.dumps(event).encode(), headers={}))
    key.status_code = 201
    key.response_body = answer.model_dump_json().encode()
    await session.commit()
    return answer


@app.get("/notifications")
async def list_notifications(
    user: Annotated[Contact, Depends(notify_user)],
    session: Annotated[AsyncSession, Depends(notify_session)],
    limit: int = 20,
    offset: int = 0,
) -> NotificationPage:
    rows = await session.scalars(
        select(Notification)
        .where(Notification.user_id == user.user_id)
        .order_by(Notification.id.desc())
        .limit(limit)
        .offset(offset)
    )
    total = await session.scalar(select(func.count()).where(Notification.user_id == user.user_id)) or 0
    unread = (
        await session.scalar(
            select(func.count()).where(Notification.user_id == user.user_id, Notification.read_at.is_(None))
        )
        or 0
    )
    return NotificationPage(
        items=[NotificationOut.model_validate(row) for row in rows],
        total=total,
        unread=unread,
        limit=limit,
        offset=offset,
    )


@app.post("/auth/login")
async def login(data: LoginRequest, session: Annotated[AsyncSession, Depends(users_session)]) -> TokenPair:
    user = await session.scalar(select(UserAccount).where(UserAccount.email == data.email.strip().lower()))
    if user is None or not user.is_active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Wrong email or password")
    try:
        # argon2 takes tens of milliseconds: off the event loop, as the guides say
        await asyncio.to_thread(password_hasher.verify, user.password_hash, data.password)
    except VerificationError:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Wrong email or password") from None
    now = datetime.datetime.now(datetime.UTC)
    refresh = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            id=uuid7(),
            user_id=user.id,
            family_id=uuid7(),
            token_hash=hashlib.sha256(refresh.encode()).hexdigest(),
            issued_at=now,
            expires_at=now + datetime.timedelta(days=30),
        )
    )
    await session.commit()
    claims = {
        "iss": "users",
        "aud": ["users", "orders", "notify"],
        "sub": str(user.id),
        "roles": [user.role],
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + ACCESS_TOKEN_SECONDS,
        "jti": str(uuid.uuid4()),
    }
    access = jwt.encode(claims, PRIVATE_KEY, algorithm="EdDSA")
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=ACCESS_TOKEN_SECONDS)


@app.get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}
