"""orders refuses access tokens issued before the replica's ``tokens_valid_after``, learnt from users' events."""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING

import msgspec
import pytest

from devtools.testing import eventually, serve_app
from orders.app import create_app
from shared.events.contracts import UserDeactivated, UserRegistered, UserUpdated
from shared.revocations import REVOCATION_DETAIL
from tests.orders.helpers import publish, replica, run_worker_until, with_nats

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer
    from orders.settings import OrdersSettings
    from shared.auth import AccessTokenSigner
    from shared.events.contracts import EventPayload


def _revocation(kind: str, user_id: uuid.UUID, at: datetime.datetime) -> EventPayload:
    if kind == "demoted":
        return UserUpdated(
            user_id=user_id, email="x@example.com", display_name="X", role="user", is_active=True, tokens_valid_after=at
        )
    return UserDeactivated(user_id=user_id, tokens_valid_after=at)


@pytest.mark.parametrize("kind", ["demoted", "deactivated"])
async def test_a_token_issued_before_tokens_valid_after_is_refused_on_every_route(
    orders_settings: OrdersSettings,
    access_token_signer: AccessTokenSigner,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    kind: str,
) -> None:
    settings = msgspec.structs.replace(with_nats(orders_settings, nats_server), token_revocation_poll_seconds=0.1)
    user_id = uuid.uuid4()
    old = {"Authorization": f"Bearer {access_token_signer.sign(subject=user_id, roles=['admin'])}"}
    async with serve_app(create_app(settings)) as client:
        assert (await client.get("/orders", headers=old)).status_code == 200
        await publish(
            jetstream,
            UserRegistered(user_id=user_id, email="x@example.com", display_name="X", role="admin"),
            sequence=1,
        )
        revoked_at = datetime.datetime.now(datetime.UTC)
        await publish(jetstream, _revocation(kind, user_id, revoked_at), sequence=2)

        async def replicated() -> bool:
            known = await replica(settings.database_url, user_id)
            return known is not None and known.tokens_valid_after == revoked_at

        await run_worker_until(settings, replicated)

        async def refused() -> bool:
            return (await client.get("/orders", headers=old)).status_code == 401

        await eventually(refused, within=10, what="the old token refused")
        for method, path in [("GET", "/orders"), ("GET", "/products"), ("POST", "/products")]:
            response = await client.request(method, path, headers=old, json={})
            assert response.status_code == 401, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["detail"] == REVOCATION_DETAIL
        # Revocation voids the tokens issued before it, not the account: a token issued since works.
        fresh = {"Authorization": f"Bearer {access_token_signer.sign(subject=user_id, roles=['user'])}"}
        assert (await client.get("/orders", headers=fresh)).status_code == 200


async def test_an_event_without_tokens_valid_after_never_clears_it(
    orders_settings: OrdersSettings, nats_server: NatsServer, jetstream: JetStreamContext
) -> None:
    settings = with_nats(orders_settings, nats_server)
    user_id = uuid.uuid4()
    revoked_at = datetime.datetime.now(datetime.UTC)
    await publish(jetstream, UserDeactivated(user_id=user_id, tokens_valid_after=revoked_at), sequence=2)
    await publish(
        jetstream,
        UserUpdated(user_id=user_id, email="x@example.com", display_name="X", role="user", is_active=True),
        sequence=3,
    )

    async def applied_both() -> bool:
        known = await replica(settings.database_url, user_id)
        return known is not None and known.sequence == 3

    await run_worker_until(settings, applied_both)
    known = await replica(settings.database_url, user_id)
    assert known is not None
    assert known.tokens_valid_after == revoked_at
