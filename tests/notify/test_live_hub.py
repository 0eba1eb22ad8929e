"""One API process's fan-out: each stream gets its user's notifications, and a slow one is let go."""

from __future__ import annotations

import datetime
import uuid

from notify.live import LiveHub
from notify.schemas import NotificationOut


def notification() -> NotificationOut:
    now = datetime.datetime.now(datetime.UTC)
    return NotificationOut(id=uuid.uuid4(), kind="order_paid", title="Paid", body="Thanks.", created_at=now)


async def test_each_stream_gets_only_its_users_notifications() -> None:
    hub = LiveHub(queue_size=10)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with hub.connect(alice) as first, hub.connect(alice) as second, hub.connect(bob) as bobs:
        sent = notification()
        hub.deliver(str(alice), sent)
        assert await first.next(1) == sent
        assert await second.next(1) == sent
        assert await bobs.next(0.05) is None
        assert hub.stream_count == 3
    assert hub.stream_count == 0


async def test_a_stream_that_falls_too_far_behind_is_closed_to_resume_later() -> None:
    hub = LiveHub(queue_size=2)
    user_id = uuid.uuid4()
    with hub.connect(user_id) as slow:
        for _ in range(3):
            hub.deliver(str(user_id), notification())
        assert slow.closed


async def test_closing_the_hub_ends_every_stream_and_any_new_one() -> None:
    hub = LiveHub(queue_size=10)
    with hub.connect(uuid.uuid4()) as open_one:
        hub.close_streams()
        assert open_one.closed
        assert await open_one.next(1) is None
        with hub.connect(uuid.uuid4()) as late:
            assert late.closed
