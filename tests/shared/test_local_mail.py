"""``just mail`` over the ``.eml`` files of a stopped stack (the running stack's delivery log: tests/system)."""

from __future__ import annotations

import datetime
import io
import json
import uuid
from email.message import EmailMessage
from email.utils import format_datetime
from typing import TYPE_CHECKING

import pytest

from devtools.stack.mail import collect_mail, main

if TYPE_CHECKING:
    from pathlib import Path


def _write(directory: Path, to: str, subject: str, when: str, body: str) -> str:
    message = EmailMessage()
    message["From"] = "Relay Shop <no-reply@relay-shop.example>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.datetime.fromisoformat(when))
    message.set_content(body)
    delivery = str(uuid.uuid4())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{delivery}.eml").write_bytes(bytes(message))
    return delivery


@pytest.fixture
def data(tmp_path: Path) -> Path:
    _write(tmp_path / "mail", "Alice <alice@example.com>", "Welcome, Alice", "2026-12-01T10:00:00+00:00", "Hello Alice")
    _write(tmp_path / "mail", "Bob <bob@example.com>", "Order 1A2B placed", "2026-12-02T10:00:00+00:00", "Thank you")
    return tmp_path


def test_a_stopped_stack_lists_its_files_newest_first(data: Path) -> None:
    mails, note = collect_mail(data)
    assert note == "the stack is not running: showing the .eml files only"
    assert [(mail.to, mail.subject, mail.status) for mail in mails] == [
        ("Bob <bob@example.com>", "Order 1A2B placed", "written"),
        ("Alice <alice@example.com>", "Welcome, Alice", "written"),
    ]
    out = io.StringIO()
    assert main(["--data", str(data)], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:5] == ["1", "2026-12-02", "10:00:00", "written", "Bob"]
    assert lines[1].endswith("Order 1A2B placed")


def test_one_email_is_printed_by_its_number(data: Path) -> None:
    out = io.StringIO()
    assert main(["2", "--data", str(data)], out=out) == 0
    text = out.getvalue()
    assert "To:       Alice <alice@example.com>" in text
    assert "Subject:  Welcome, Alice" in text
    assert text.rstrip().endswith("Hello Alice")
    raw = io.StringIO()
    assert main(["2", "--raw", "--data", str(data)], out=raw) == 0
    assert raw.getvalue().startswith("From: Relay Shop <no-reply@relay-shop.example>")


def test_a_number_out_of_the_list_is_one_line(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["3", "--data", str(data)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "just mail: no email 3 (there are 2)"


def test_an_unreachable_delivery_log_still_lists_the_files(data: Path) -> None:
    (data / "run" / "env").mkdir(parents=True)
    url = "postgresql+asyncpg://notify:nothing@127.0.0.1:1/relay"
    (data / "run" / "env" / "notify.json").write_text(json.dumps({"NOTIFY_DATABASE_URL": url}))
    mails, note = collect_mail(data)
    assert note.startswith("notify's delivery log is out of reach (")
    assert len(mails) == 2
