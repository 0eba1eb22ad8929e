"""Following one order on the running stack: its trace in the local collector, its email, its events."""

from __future__ import annotations

import asyncio
import io
import secrets
import subprocess
import sys
import uuid

import httpx

from devtools.stack.mail import collect_mail
from devtools.testing import eventually
from devtools.traces.store import SpanRow, SpanStore, store_path
from devtools.traces.view import main as traces_main
from tests.system.conftest import RunningStack
from tests.system.test_system import Customer, add_product, admin_token


def _spans(stack: RunningStack, trace_id: str) -> list[SpanRow]:
    store = SpanStore(store_path(stack.data))
    connection = store.connect()
    try:
        return store.spans(connection, trace_id)
    finally:
        connection.close()


def _one(spans: list[SpanRow], *, service: str, kind: str, name: str) -> SpanRow:
    found = [span for span in spans if (span.service, span.kind, span.name) == (service, kind, name)]
    assert len(found) == 1, (service, kind, name, [(s.service, s.kind, s.name) for s in spans])
    return found[0]


async def test_one_order_is_one_trace_from_the_request_through_the_relay_to_notify(stack: RunningStack) -> None:
    customer = await Customer.register(stack, "traced")
    admin = await admin_token(stack)
    product = await add_product(stack, admin, stock=3)
    # The client starts the trace: its id is known, and the server span must be its child.
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    async with httpx.AsyncClient(base_url=stack.url("orders"), timeout=30) as orders:
        placed = await orders.post(
            "/orders",
            json={"items": [{"product_id": product, "quantity": 1}]},
            headers=customer.headers
            | {"Idempotency-Key": uuid.uuid4().hex, "traceparent": f"00-{trace_id}-{client_span}-01"},
        )
    assert placed.status_code == 201, placed.text

    async def whole_trace() -> list[SpanRow]:
        spans = await asyncio.to_thread(_spans, stack, trace_id)
        kinds = {(span.service, span.kind) for span in spans}
        return spans if {("orders", "SERVER"), ("orders", "PRODUCER"), ("notify", "CONSUMER")} <= kinds else []

    spans = await eventually(whole_trace, within=60, what="the order's spans in the local collector")
    assert {span.trace_id for span in spans} == {trace_id}

    server = _one(spans, service="orders", kind="SERVER", name="POST /orders")
    producer = _one(spans, service="orders", kind="PRODUCER", name="send orders.order.placed")
    consumer = _one(spans, service="notify", kind="CONSUMER", name="process orders.order.placed")
    assert server.parent_span_id == client_span
    assert server.attributes["http.route"] == "/orders"
    # The relay's publish continues the request's trace from the outbox row ...
    assert producer.parent_span_id == server.span_id
    assert producer.attributes["messaging.destination.name"] == "orders.order.placed"
    # ... and notify's processing is the child of that publish, for the same message.
    assert consumer.parent_span_id == producer.span_id
    assert consumer.attributes["messaging.message.id"] == producer.attributes["messaging.message.id"]
    assert consumer.attributes["messaging.consumer.group.name"] == "notify-order-notifications"
    assert server.start_ns <= producer.start_ns <= consumer.start_ns
    assert all(span.status != "ERROR" for span in spans)

    # The request's access-log line in the `just up` console carries the same trace id.
    access = [line for line in stack.log if line.lstrip().startswith("orders-api |") and "POST /orders 201 " in line]
    assert [line for line in access if f"trace_id={trace_id}" in line], access[-5:]
    assert [line for line in access if f"user_id={customer.id}" in line], access[-5:]

    # So do the relay's line for the event it published and notify's for the event it consumed (applied).
    for process, said in (
        ("orders-worker", "published orders.order.placed ok"),
        ("notify-worker", "consumed orders.order.placed applied"),
    ):
        events = [line for line in stack.log if line.lstrip().startswith(f"{process} |")]
        assert [line for line in events if said in line and f"trace_id={trace_id}" in line], (process, events[-5:])

    # `just trace <id>` draws the same three spans, each under its parent, with the message id.
    drawn = io.StringIO()
    assert traces_main(["show", trace_id[:12], "--data", str(stack.data)], out=drawn) == 0
    lines = drawn.getvalue().splitlines()
    assert lines[0].startswith(f"trace {trace_id}:")
    rows = {
        name: next(line for line in lines if f" {name} " in line)
        for name in (server.name, producer.name, consumer.name)
    }
    message_id = producer.attributes["messaging.message.id"]
    for name, service, kind, shown in (
        (server.name, "orders", "SERVER", "status=201"),
        (producer.name, "orders", "PRODUCER", f"id={message_id}"),
        (consumer.name, "notify", "CONSUMER", f"id={message_id}"),
    ):
        assert rows[name].split()[2:4] == [service, kind], rows[name]
        assert shown in rows[name], rows[name]
    indents = [rows[name].index(name) for name in (server.name, producer.name, consumer.name)]
    assert indents[0] < indents[1] < indents[2], lines

    # `just traces` lists it with the services it touched.
    listed = io.StringIO()
    assert traces_main(["list", "-n", "200", "--data", str(stack.data)], out=listed) == 0
    (line,) = [line for line in listed.getvalue().splitlines() if trace_id in line]
    assert "POST /orders" in line
    assert set(line.split()[4].split(",")) == {"orders", "notify"}, line

    # The email it caused is in `just mail`, with notify's delivery status.
    order_code = uuid.UUID(placed.json()["id"]).hex[-8:].upper()  # how notify names an order

    async def emailed() -> bool:
        mails, note = await asyncio.to_thread(collect_mail, stack.data)
        assert note == "", note
        return any(order_code in mail.subject and mail.status == "sent" and mail.file is not None for mail in mails)

    await eventually(emailed, within=60, what="the order's email sent and written")


async def test_events_overview_shows_every_services_stream_and_consumers(stack: RunningStack) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "devtools.stack.events", "--data", str(stack.data)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sections: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        if not line.startswith(" "):
            sections[line] = []
        else:
            sections[list(sections)[-1]].append(line.strip())
    assert list(sections) == ["users", "orders", "notify"], done.stdout
    expected_consumers = {
        "users": [],
        "orders": ["orders-users-replica (USERS)"],
        "notify": ["notify-users-replica (USERS)", "notify-order-notifications (ORDERS)"],
    }
    for service, lines in sections.items():
        assert lines[0].startswith("outbox backlog: "), lines
        assert lines[1].startswith(f"stream {service.upper()}: "), lines
        consumers = [line.removeprefix("consumer ").split(":")[0] for line in lines[2:]]
        assert consumers == expected_consumers[service], lines
        for line in lines[2:]:
            for count in ("pending", "ack pending", "redelivered", "dead-lettered"):
                assert f"{count} " in line, line
