"""``just demo``: a client's walk through the whole story, against a stack started by ``just up``.

Every step prints what it sent and what came back. It talks to the services over HTTP and SSE only;
the one exception is creating the administrator, which (as in production) is a command run with the
users service's own settings, never an endpoint.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from devtools.stack.supervisor import DevStack, StackPorts
from shared.events.topology import SERVICE_NAMES

PASSWORD = "demo password 123"  # noqa: S105 - the demo's own throwaway accounts
SHOWN_BODY = 300
"""Longer answers are cut when printed."""
ORDER_STEPS = ("placed", "paid", "shipped", "delivered")


class Demo:
    """One run of the story, with unique emails so it can be told again on the same data."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.run = uuid.uuid4().hex[:6]
        ports = stack.ports
        self.users = httpx.Client(base_url=f"http://127.0.0.1:{ports.users}", timeout=10)
        self.orders = httpx.Client(base_url=f"http://127.0.0.1:{ports.orders}", timeout=10)
        self.notify = httpx.Client(base_url=f"http://127.0.0.1:{ports.notify}", timeout=10)
        self.live: list[dict[str, Any]] = []

    def call(
        self, client: httpx.Client, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request and print both sides, shortened."""
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        sent = kwargs.get("json")
        shown = {k: v for k, v in headers.items() if k != "Authorization"}
        print(f"  → {method} {client.base_url.port}{path} {json.dumps(sent) if sent else ''} {shown or ''}".rstrip())
        response = client.request(method, path, headers=headers, **kwargs)
        body = response.text if len(response.text) < SHOWN_BODY else response.text[: SHOWN_BODY - 3] + "..."
        print(f"  ← {response.status_code} {body}")
        return response

    def step(self, title: str) -> None:
        """Print a heading."""
        print(f"\n== {title}")

    def register(self, name: str) -> tuple[str, str]:
        """Register and sign in; returns the user id and an access token."""
        email = f"{name.lower()}.{self.run}@example.com"
        account = self.call(
            self.users, "POST", "/auth/register", json={"email": email, "password": PASSWORD, "display_name": name}
        )
        account.raise_for_status()
        tokens = self.call(self.users, "POST", "/auth/login", json={"email": email, "password": PASSWORD}).json()
        return account.json()["id"], tokens["access_token"]

    def admin(self) -> str:
        """Create an administrator with the users command (as ops would), then sign in."""
        email = f"admin.{self.run}@example.com"
        env = self.stack.service_env("users", self.stack.database_url("users"))
        users = Path(sys.executable).parent / "users"
        print(f"  $ users create-admin --email {email}")
        done = subprocess.run(
            [str(users), "create-admin", "--email", email],
            input=f"{PASSWORD}\n{PASSWORD}\n",
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"  {done.stdout.strip()}")
        return str(
            self.call(self.users, "POST", "/auth/login", json={"email": email, "password": PASSWORD}).json()[
                "access_token"
            ]
        )

    def listen(self, token: str) -> None:
        """Follow the notification stream in the background, as a browser tab would."""

        def follow() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.stream(
                "GET",
                f"{self.notify.base_url}/notifications/stream",
                headers=headers,
                timeout=httpx.Timeout(10.0, read=None),  # a stream is quiet between events
            ) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        self.live.append(json.loads(line[5:]))

        threading.Thread(target=follow, daemon=True).start()

    def wait_for(self, what: str, check: Any, within: float = 15.0) -> Any:
        """Poll until ``check()`` returns something truthy."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if result := check():
                return result
            time.sleep(0.2)
        raise SystemExit(f"demo: {what} did not happen within {within}s")

    def mails_to(self, address: str, *, at_least: int) -> list[tuple[Path, str]] | None:
        """The ``.eml`` files addressed to ``address`` with their subjects, oldest first, once there are enough."""
        found = []
        for path in sorted(self.stack.mail_dir.glob("*.eml")):  # named by UUIDv7: sorted is oldest first
            with path.open("rb") as file:
                message = email.message_from_binary_file(file, policy=email.policy.default)
            if address in str(message["To"]):
                found.append((path, str(message["Subject"])))
        return found if len(found) >= at_least else None

    def tell(self) -> None:
        """The story."""
        self.step("Two customers register (users publishes users.user.registered)")
        alice_id, alice = self.register("Alice")
        bob_id, bob = self.register("Bob")
        self.listen(alice)

        self.step("An administrator is created with a command, then adds products")
        admin = self.admin()
        cup = self.call(
            self.orders,
            "POST",
            "/products",
            token=admin,
            json={"sku": f"CUP-{self.run}", "name": "Espresso cup", "price": 1250, "currency": "EUR", "stock": 5},
        ).json()
        pot = self.call(
            self.orders,
            "POST",
            "/products",
            token=admin,
            json={"sku": f"POT-{self.run}", "name": "Teapot", "price": 3900, "currency": "EUR", "stock": 2},
        ).json()

        self.step("Alice orders with an Idempotency-Key, then sends the very same request again")
        order_body = {"items": [{"product_id": cup["id"], "quantity": 2}, {"product_id": pot["id"], "quantity": 1}]}
        key = {"Idempotency-Key": f"alice-{self.run}"}
        order = self.call(self.orders, "POST", "/orders", token=alice, json=order_body, headers=key).json()
        again = self.call(self.orders, "POST", "/orders", token=alice, json=order_body, headers=key).json()
        print(f"  same order both times: {order['id'] == again['id']} (total {order['total']} cents)")

        self.step("Alice pays; the administrator ships and delivers")
        for action, token in (("pay", alice), ("ship", admin), ("deliver", admin)):
            self.call(self.orders, "POST", f"/orders/{order['id']}/{action}", token=token)

        self.step("Alice's notifications arrive: live over SSE, in the list, and as emails")
        self.wait_for("a notification per order step", lambda: len(self.live) >= len(ORDER_STEPS))
        for event in self.live:
            print(f"  SSE  {event.get('kind', '?'):<16} {event.get('title', '')}")
        self.call(self.notify, "GET", "/notifications", token=alice, params={"limit": 3})
        # Her order emails, as files, before anything else happens to her account: the email sweep
        # runs every few seconds, and a deactivation before it would cancel them (nothing is sent to
        # a deactivated account).
        alice_email = f"alice.{self.run}@example.com"
        mails = self.wait_for(
            "Alice's welcome and order emails as .eml files",
            lambda: self.mails_to(alice_email, at_least=1 + len(ORDER_STEPS)),
            within=30.0,
        )
        print(f"  Alice's emails, as files in {self.stack.mail_dir.resolve()}:")
        for path, subject in mails:
            print(f"  EML  {path.name}  {subject}")

        self.step("Bob tries to buy more teapots than there are: refused, nothing reserved")
        self.call(
            self.orders,
            "POST",
            "/orders",
            token=bob,
            json={"items": [{"product_id": pot["id"], "quantity": 5}]},
            headers={"Idempotency-Key": f"bob-{self.run}"},
        )

        self.step("Bob cannot see Alice's order (404, not 403: ids don't leak)")
        self.call(self.orders, "GET", f"/orders/{order['id']}", token=bob)

        self.step("Alice orders again, then deactivates her account: orders cancels her open order")
        open_order = self.call(
            self.orders,
            "POST",
            "/orders",
            token=alice,
            json={"items": [{"product_id": cup["id"], "quantity": 1}]},
            headers={"Idempotency-Key": f"alice-2-{self.run}"},
        ).json()
        self.call(self.users, "DELETE", "/users/me", token=alice)

        def cancelled() -> dict[str, Any] | None:
            current = self.orders.get(
                f"/orders/{open_order['id']}", headers={"Authorization": f"Bearer {admin}"}
            ).json()
            return current if current["status"] == "cancelled" else None

        current = self.wait_for("the cancellation", cancelled)
        print(f"  order {current['id']}: {current['status']} ({current['cancel_reason']})")
        self.call(
            self.orders,
            "POST",
            "/orders",
            token=alice,
            json=order_body,
            headers={"Idempotency-Key": f"alice-3-{self.run}"},
        )
        print(f"\nThe story is told (users {alice_id[:8]}…, {bob_id[:8]}…).")


def main() -> None:
    """Run the demo against ``.data/`` (or ``RELAY_DATA``)."""
    stack = DevStack(
        Path(os.environ.get("RELAY_DATA", ".data")),
        StackPorts.from_environment(),
        services=SERVICE_NAMES,
    )
    for service in stack.services:
        try:
            httpx.get(f"http://127.0.0.1:{stack.ports.api(service)}/health/ready", timeout=2).raise_for_status()
        except httpx.HTTPError:
            raise SystemExit(f"demo: {service} is not ready; start the stack first with `uv run just up`") from None
    Demo(stack).tell()


if __name__ == "__main__":
    main()
