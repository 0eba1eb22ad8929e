"""The pure parts: the words of every kind, amounts, and unsubscribe tokens."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from notify.schemas import KINDS
from notify.settings import NotifySettings
from notify.templates import NotificationTemplates, money
from notify.tokens import MalformedToken, UnsubscribeLinks
from shared.errors import Forbidden
from shared.settings import load_settings

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "a-secret-of-enough-length"


@pytest.mark.parametrize(
    ("minor_units", "currency", "expected"),
    [(1250, "eur", "12.50 EUR"), (5, "USD", "0.05 USD"), (-199, "EUR", "-1.99 EUR"), (1200, "JPY", "1200 JPY")],
)
def test_amounts_read_as_people_write_them(minor_units: int, currency: str, expected: str) -> None:
    assert money(minor_units, currency) == expected


def test_every_kind_renders_a_title_and_a_body() -> None:
    templates = NotificationTemplates()
    context = {"name": "Ada", "order": "1A2B3C4D", "items": 1, "total": "9.99 EUR", "reason": "customer"}
    for kind in KINDS:
        rendered = templates.render(kind, context)
        assert rendered.title
        assert rendered.body
        assert "\n" not in rendered.title
    assert "reserved 1 item for you" in templates.render("order_placed", context).body
    assert "cancelled at your request" in templates.render("order_cancelled", context).body
    unknown_reason = templates.render("order_cancelled", context | {"reason": "fraud_check"})
    assert "cancelled (fraud_check)" in unknown_reason.body


def test_an_email_says_why_it_was_sent_and_how_to_stop_it() -> None:
    text = NotificationTemplates().email_text(
        kind="order_shipped", name="", body="On its way.", unsubscribe_url="http://n/unsubscribe?token=t"
    )
    assert text.startswith("Hello there,\n\nOn its way.\n")
    assert "shipping updates are on" in text
    assert text.endswith("To stop emails like this one: http://n/unsubscribe?token=t\n")


def test_a_token_names_its_user_and_kind_and_nothing_else_verifies() -> None:
    links = UnsubscribeLinks(SECRET, "http://notify.test/")
    user_id = uuid.uuid4()
    token = links.token(user_id, "order_paid")

    assert links.verify(token) == (user_id, "order_paid")
    assert links.url(user_id, "order_paid") == f"http://notify.test/notifications/unsubscribe?token={token}"
    with pytest.raises(Forbidden):
        UnsubscribeLinks(SECRET + "-rotated", "http://notify.test").verify(token)
    with pytest.raises(Forbidden):
        links.verify(token.replace("order_paid", "order_shipped"))
    with pytest.raises(MalformedToken):
        links.verify(token + ".extra")
    with pytest.raises(MalformedToken):
        links.verify(f"not-a-uuid.order_paid.{token.rsplit('.', 1)[1]}")


def test_a_short_unsubscribe_secret_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="NOTIFY_UNSUBSCRIBE_SECRET"):
        UnsubscribeLinks("short", "http://notify.test")


def test_the_unsubscribe_secret_and_email_url_can_come_from_files(tmp_path: Path) -> None:
    secret_file, url_file = tmp_path / "secret", tmp_path / "email-url"
    secret_file.write_text(SECRET + "\n")
    url_file.write_text("smtp://mailer:pw@mail.internal:587?starttls=true\n")
    settings = load_settings(
        NotifySettings,
        "NOTIFY",
        environ={
            "NOTIFY_DATABASE_URL": "postgresql+asyncpg://notify@db/relay",
            "NOTIFY_UNSUBSCRIBE_SECRET_FILE": str(secret_file),
            "NOTIFY_EMAIL_URL_FILE": str(url_file),
            "NOTIFY_STREAM_HEARTBEAT_SECONDS": "2.5",
        },
    )
    assert settings.unsubscribe_secret == SECRET
    assert settings.email_url == "smtp://mailer:pw@mail.internal:587?starttls=true"
    assert settings.stream_heartbeat_seconds == 2.5
