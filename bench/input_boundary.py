"""Benchmark: what the input boundary (``shared.boundary``) costs per request, against no boundary.

Two Litestar apps in this one process, identical but for ``InputBoundaryMiddleware``: the same
routes (a JSON body route shaped like ``POST /orders``, a query route shaped like ``GET /products``),
the same problem handlers. Requests are driven straight through ASGI (no socket, no HTTP client),
one after another, so the numbers are the app's own CPU per request and the difference is the
boundary's. The bodies: a small JSON object (a sign-in), the largest legal order (50 lines), and a
16 KB body of many short strings (the scan's worst ordinary case: many brackets and quotes).

A second table times the byte scan alone (``json_body_problem``) against decoding the same body
with msgspec, which every JSON route does anyway.

Run: ``uv run python -m bench.input_boundary [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Litestar, get, post
from litestar.params import JSONBody, QueryParameter

from shared.boundary import BoundaryConfig, InputBoundaryMiddleware, json_body_problem
from shared.errors import exception_handlers


class Line(msgspec.Struct, forbid_unknown_fields=True):
    product_id: uuid.UUID
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1000)]


class Order(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[Line], msgspec.Meta(min_length=1, max_length=50)]


class Anything(msgspec.Struct):
    email: str = ""
    password: str = ""
    notes: list[str] = []


@post("/orders", sync_to_thread=False)
def place(data: JSONBody[Order]) -> dict[str, int]:
    return {"lines": len(data.items)}


@post("/any", sync_to_thread=False)
def anything(data: JSONBody[Anything]) -> dict[str, int]:
    return {"notes": len(data.notes)}


@get("/products", sync_to_thread=False)
def products(q: Annotated[str | None, QueryParameter(max_length=100)] = None, limit: int = 20) -> dict[str, int]:
    return {"limit": limit}


def build(*, boundary: bool) -> Litestar:
    return Litestar(
        route_handlers=[place, anything, products],
        middleware=[InputBoundaryMiddleware()] if boundary else [],
        exception_handlers=exception_handlers(),
        openapi_config=None,
        logging_config=None,
    )


SIGN_IN = json.dumps({"email": "ada@example.com", "password": "correct horse battery"}).encode()
LARGEST_ORDER = json.dumps({"items": [{"product_id": str(uuid.uuid4()), "quantity": 1000} for _ in range(50)]}).encode()
MANY_STRINGS = json.dumps({"notes": [f"note {n} [x] {{y}}" for n in range(800)]}).encode()[:16_000].rsplit(b",", 1)[0]
MANY_STRINGS += b"]}"


async def drive(app: Litestar, method: str, path: str, *, query: bytes, body: bytes, count: int) -> float:
    """CPU seconds for ``count`` requests through the app's ASGI callable."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    started = time.process_time()
    for _ in range(count):
        delivered = False

        async def receive() -> Any:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query,
            "headers": headers if body else [],
            "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await app(scope, receive, send)  # type: ignore[arg-type]  # a plain dict stands in for the typed scope
        status = sent[0]["status"]
        if status >= 300:  # noqa: PLR2004 - every request here is legal
            raise RuntimeError(f"{method} {path}: {status} {sent[1]['body']!r}")
        sent.clear()
    return time.process_time() - started


def scan_versus_decode(body: bytes, rounds: int) -> tuple[float, float]:
    depth = BoundaryConfig().max_json_depth
    started = time.process_time()
    for _ in range(rounds):
        json_body_problem(body, max_depth=depth)
    scan = time.process_time() - started
    started = time.process_time()
    for _ in range(rounds):
        msgspec.json.decode(body)
    return scan, time.process_time() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    apps = {"without": build(boundary=False), "with": build(boundary=True)}
    cases = [
        ("sign-in JSON", "POST", "/any", b"", SIGN_IN),
        ("largest order (50 lines)", "POST", "/orders", b"", LARGEST_ORDER),
        ("16 KB of strings", "POST", "/any", b"", MANY_STRINGS),
        ("GET with query", "GET", "/products", b"q=mug&limit=20", b""),
    ]
    for app in apps.values():  # warm up: handler caches, signature models
        for _, method, path, query, body in cases:
            await drive(app, method, path, query=query, body=body, count=50)
    print(f"{args.requests} requests each, CPU microseconds per request (3 alternating rounds, best)")
    print(f"{'request':28} {'bytes':>6} {'without':>9} {'with':>9} {'ratio':>6}")
    for name, method, path, query, body in cases:
        best = {label: float("inf") for label in apps}
        for _ in range(3):
            for label, app in apps.items():
                seconds = await drive(app, method, path, query=query, body=body, count=args.requests)
                best[label] = min(best[label], seconds / args.requests * 1e6)
        ratio = best["with"] / best["without"]
        print(f"{name:28} {len(body):6} {best['without']:9.1f} {best['with']:9.1f} {ratio:6.2f}")
    print()
    print("the byte scan alone against msgspec decoding the same body, microseconds per body")
    print(f"{'body':28} {'scan':>9} {'decode':>9} {'ratio':>6}")
    for name, _, _, _, body in cases[:3]:
        rounds = 20_000
        scan, decode = scan_versus_decode(body, rounds)
        print(f"{name:28} {scan / rounds * 1e6:9.2f} {decode / rounds * 1e6:9.2f} {scan / decode:6.2f}")


if __name__ == "__main__":
    asyncio.run(main())
