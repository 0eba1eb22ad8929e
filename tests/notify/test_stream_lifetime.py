"""A live stream lives no longer than its token (expiry, revocation) and each user holds only a few.

Like ``test_live_stream``, against a real ``notify api`` process (granian), because a stream never
completes and httpx's in-process transport hands over only complete responses.
"""

from __future__ import annotations

import datetime
import gc
import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from devtools.testing import eventually
from notify.live import ENDED_BY_EXPIRY, ENDED_BY_REVOCATION, LiveHub, NotificationFeed
from notify.models import Notification
from shared.auth import AccessTokenSigner, Principal
from shared.errors import TooManyRequests
from shared.events.contracts import OrderPaid, UserUpdated
from shared.revocations import REVOCATION_DETAIL
from tests.notify.helpers import at_least, bearer, known_user, open_stream, placed, running_apis

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.notify.helpers import ApiProcess, Publisher, RunningWorker

MAX_STREAMS = 2


@pytest.fixture(scope="module")
def api(notify_api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    env = notify_api_env | {
        "NOTIFY_STREAM_MAX_PER_USER": str(MAX_STREAMS),
        "NOTIFY_TOKEN_REVOCATION_POLL_SECONDS": "0.2",
    }
    with running_apis(env, tmp_path_factory.mktemp("notify-api"), count=1) as (process,):
        yield process


async def test_a_stream_ends_at_its_tokens_expiry_and_a_fresh_token_resumes_without_loss(
    api: ApiProcess,
    worker: RunningWorker,
    publisher: Publisher,
    engine: AsyncEngine,
    private_key_pem: str,
    access_token_signer: AccessTokenSigner,
) -> None:
    user_id = await known_user(engine)
    short = AccessTokenSigner(private_key_pem, issuer="users", audiences=["notify"], ttl_seconds=3)
    token = short.sign(subject=user_id, roles=["user"])
    expires_at = short.ttl_seconds + int(time.time())  # at most this (iat is the whole second it was signed in)
    order = placed(user_id)
    async with open_stream(api.url, {"Authorization": f"Bearer {token}"}) as stream:
        await publisher.publish(order)
        seen = await stream.next_notification()
        rest = await stream.until_end(within=30)
        ended_at = time.time()
    assert [ENDED_BY_EXPIRY] in [block.comments for block in rest]
    assert not [block for block in rest if block.event == "notification"]
    assert ended_at >= expires_at - 1  # not before the token's exp

    # While the client fetches a fresh token, something happens: the resumed stream has it.
    await publisher.publish(OrderPaid(order_id=order.order_id, user_id=user_id, total=order.total, currency="EUR"))
    await eventually(lambda: at_least(engine, Notification, 2), what="the payment's notification stored")
    async with open_stream(api.url, bearer(access_token_signer, user_id), last_event_id=seen.id) as resumed:
        missed = await resumed.next_notification()
    assert missed.json()["kind"] == "order_paid"


async def test_revoking_the_token_ends_its_stream_and_refuses_it(
    api: ApiProcess,
    worker: RunningWorker,
    publisher: Publisher,
    engine: AsyncEngine,
    access_token_signer: AccessTokenSigner,
) -> None:
    user_id = await known_user(engine)
    old = bearer(access_token_signer, user_id)
    async with open_stream(api.url, old) as stream:
        # users demoted, deactivated or signed the account out: its event carries tokens_valid_after.
        revoked_at = datetime.datetime.now(datetime.UTC)
        await publisher.publish(
            UserUpdated(
                user_id=user_id,
                email="lin@example.com",
                display_name="Lin",
                role="user",
                is_active=True,
                tokens_valid_after=revoked_at,
            ),
            sequence=2,
        )
        rest = await stream.until_end(within=30)
    assert [ENDED_BY_REVOCATION] in [block.comments for block in rest]
    async with httpx.AsyncClient(base_url=api.url) as client:
        refused = await client.get("/notifications", headers=old)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["detail"] == REVOCATION_DETAIL
        fresh = await client.get("/notifications", headers=bearer(access_token_signer, user_id))
        assert fresh.status_code == 200


async def test_streams_are_capped_per_user_without_touching_other_users(
    api: ApiProcess, engine: AsyncEngine, access_token_signer: AccessTokenSigner
) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    async with (
        open_stream(api.url, bearer(access_token_signer, alice)),
        open_stream(api.url, bearer(access_token_signer, alice)),
    ):
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            over = await client.get("/notifications/stream", headers=bearer(access_token_signer, alice))
        assert over.status_code == 429
        assert over.headers["content-type"] == "application/problem+json"
        assert int(over.headers["retry-after"]) >= 1
        async with (
            open_stream(api.url, bearer(access_token_signer, bob)),
            open_stream(api.url, bearer(access_token_signer, bob)),
        ):
            pass  # bob has his own allowance, whatever alice holds

    async def both_places_free_again() -> bool:
        # The server notices a client gone at its next write (a heartbeat): then the place is free.
        try:
            async with (
                open_stream(api.url, bearer(access_token_signer, alice)),
                open_stream(api.url, bearer(access_token_signer, alice)),
            ):
                return True
        except AssertionError:
            return False

    await eventually(both_places_free_again, what="closed streams give their places back")


async def test_a_place_taken_for_a_stream_that_never_starts_is_given_back(engine: AsyncEngine) -> None:
    # A client that leaves before the first byte: its events are never iterated, and still the place returns.
    hub = LiveHub(queue_size=10, max_per_user=1)
    feed = NotificationFeed(hub=hub, engine=engine, heartbeat_seconds=1, replay_page=10)
    user = Principal(id=uuid.uuid4(), roles=frozenset({"user"}), token_id="t", expires_at=int(time.time()) + 60)
    events = feed.open(user, after=None)
    with pytest.raises(TooManyRequests):
        feed.open(user, after=None)
    other = feed.open(Principal(id=uuid.uuid4(), roles=frozenset(), token_id="u", expires_at=0), after=None)
    del events
    gc.collect()
    assert hub.stream_count == 1
    feed.open(user, after=None)
    del other
