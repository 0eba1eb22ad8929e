"""The words of every notification and email, as jinja2 templates kept in this module.

Everything rendered here is plain text: titles and bodies travel as JSON strings and in
``text/plain`` email, and every client escapes them for its own medium. So autoescaping (which
would put ``&amp;`` into an email) stays off, and user-supplied values are folded onto one line,
so no display name can add a line to an email header.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import jinja2
import msgspec

from shared.addresses import printable_name

if TYPE_CHECKING:
    from collections.abc import Mapping

    from notify.schemas import NotificationKind

__all__ = ("KIND_LABELS", "NotificationTemplates", "Rendered", "money", "unsubscribe_page")

_SOURCES: dict[str, str] = {
    "welcome.title": "Welcome to Relay Shop, {{ name }}",
    "welcome.body": (
        "Your account is ready. Browse the catalogue and place your first order whenever you like; "
        "we will keep you posted here at every step."
    ),
    "order_placed.title": "Order {{ order }} placed",
    "order_placed.body": (
        "Thank you, {{ name }}. We have reserved {{ items }} item{{ '' if items == 1 else 's' }} for you, "
        "{{ total }} in all. Your order waits for payment."
    ),
    "order_paid.title": "Payment received for order {{ order }}",
    "order_paid.body": "We received your payment of {{ total }}. Your order is being packed.",
    "order_shipped.title": "Order {{ order }} is on its way",
    "order_shipped.body": "Your order left our warehouse and is on its way to you.",
    "order_delivered.title": "Order {{ order }} was delivered",
    "order_delivered.body": "Your order has arrived. We hope you enjoy it, {{ name }}.",
    "order_cancelled.title": "Order {{ order }} was cancelled",
    "order_cancelled.body": ("Your order was cancelled {{ reason }}. Everything reserved for it has been released."),
    "email.txt": (
        "Hello {{ name }},\n"
        "\n"
        "{{ body }}\n"
        "\n"
        "-- \n"
        "Relay Shop. You get this email because {{ label }} are on in your notification preferences.\n"
        "To stop emails like this one: {{ unsubscribe_url }}\n"
    ),
}

_CANCEL_REASONS = {
    "customer": "at your request",
    "payment_timeout": "because payment did not arrive in time",
    "user_deactivated": "because the account was deactivated",
}

KIND_LABELS: dict[NotificationKind, str] = {
    "welcome": "welcome messages",
    "order_placed": "order confirmations",
    "order_paid": "payment receipts",
    "order_shipped": "shipping updates",
    "order_delivered": "delivery updates",
    "order_cancelled": "cancellation notices",
}
"""How the email footer names each kind."""

_ZERO_DECIMAL_CURRENCIES = frozenset({"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "UGX", "VND"})


def money(minor_units: int, currency: str) -> str:
    """An amount in minor units as people read it, like ``12.50 EUR`` (``1200 JPY`` has no decimals)."""
    code = currency.upper()
    if code in _ZERO_DECIMAL_CURRENCIES:
        return f"{minor_units} {code}"
    sign = "-" if minor_units < 0 else ""
    whole, cents = divmod(abs(minor_units), 100)
    return f"{sign}{whole}.{cents:02d} {code}"


def _one_line(value: Any) -> Any:
    # Control characters (NUL, CR, bidi overrides...) become spaces: Postgres text cannot hold NUL,
    # and none belongs in a title or an email header.
    return printable_name(value) if isinstance(value, str) else value


class Rendered(msgspec.Struct, frozen=True):
    """A notification's words."""

    title: str
    body: str


class NotificationTemplates:
    """Renders each kind's title and body, and the email around a body."""

    def __init__(self) -> None:
        self._environment = jinja2.Environment(
            loader=jinja2.DictLoader(_SOURCES),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - plain text only, never HTML (see the module docstring)
            keep_trailing_newline=True,
        )
        self._templates = {name: self._environment.get_template(name) for name in _SOURCES}

    def render(self, kind: NotificationKind, context: Mapping[str, Any]) -> Rendered:
        """The title and body of a ``kind`` notification.

        Args:
            kind: Which notification.
            context: ``name`` (the recipient's display name) and the kind's own values: ``order``
                (a short order reference), ``items``, ``total``, ``reason``.
        """
        values = {key: _one_line(value) for key, value in context.items()}
        if "reason" in values:
            values["reason"] = _CANCEL_REASONS.get(values["reason"], f"({values['reason']})")
        title = self._templates[f"{kind}.title"].render(values)
        body = self._templates[f"{kind}.body"].render(values)
        return Rendered(title=title[:200], body=body)

    def email_text(self, *, kind: NotificationKind, name: str, body: str, unsubscribe_url: str) -> str:
        """The text of the email that carries a notification's body, with its unsubscribe link."""
        return self._templates["email.txt"].render(
            name=_one_line(name) or "there", body=body, label=KIND_LABELS[kind], unsubscribe_url=unsubscribe_url
        )


_UNSUBSCRIBE_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>Unsubscribe - Relay Shop</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>Stop emails about {label}?</h1>
<p>You will still see them in the app. You can turn them back on in your notification preferences.</p>
<form method="post" action="?token={token}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>
</body>
</html>
"""


def unsubscribe_page(*, kind: NotificationKind, token: str) -> str:
    """The page an email's unsubscribe link opens: it asks, and only its button changes anything.

    Link scanners and mail previews fetch every GET link; a GET that unsubscribed would turn emails
    off for people who never clicked. The button posts, as a one-click client does (RFC 8058).
    """
    return _UNSUBSCRIBE_PAGE.format(label=html.escape(KIND_LABELS[kind]), token=html.escape(token, quote=True))
