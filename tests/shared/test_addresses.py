"""shared.addresses: one canonical form per address, names safe for headers."""

from __future__ import annotations

import unicodedata

import pytest

from shared.addresses import (
    InvalidDisplayName,
    InvalidEmail,
    canonical_email,
    check_display_name,
    email_lookup_key,
    email_search_keys,
    printable_name,
)

SPELLINGS_OF_ONE_ADDRESS = [
    "Ünï@Exämple.com",
    unicodedata.normalize("NFD", "Ünï@Exämple.com"),
    "ÜNÏ@EXÄMPLE.COM",
    " ünï@exämple.com ",
    "ünï@xn--exmple-cua.com",
    "ünï@XN--EXMPLE-CUA.COM",
    "ünï@ｅｘäｍｐｌｅ.com",
    "ünï@exämple.com.",
]


@pytest.mark.parametrize("spelling", SPELLINGS_OF_ONE_ADDRESS)
def test_every_spelling_of_an_address_has_the_same_canonical_form(spelling: str) -> None:
    assert canonical_email(spelling) == "ünï@xn--exmple-cua.com"
    assert email_lookup_key(spelling) == "ünï@xn--exmple-cua.com"


@pytest.mark.parametrize(
    "address", ["ada@example.com", "ünï@xn--exmple-cua.com", "a.b+tag@sub.example.co.uk", "δοκιμή@παράδειγμα.δοκιμή"]
)
def test_the_canonical_form_is_its_own_canonical_form(address: str) -> None:
    once = canonical_email(address)
    assert canonical_email(once) == once
    assert once == unicodedata.normalize("NFC", once)
    assert once.rpartition("@")[2].isascii()


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at-sign",
        "@example.com",
        "ada@",
        "ada@exa mple.com",
        "ada@-example.com",
        "ada@example..com",
        "ada@exam_ple.com",
        "ada@localhost",
        "a da@example.com",
        '"ada"@example.com',
        "a@b@example.com",
        ".ada@example.com",
        "ada.@example.com",
        "a..da@example.com",
        "ada\x00@example.com",
        "ada\r\n@example.com",
        "ada@example.com\r\nBcc: x@y",
        "a\u202eda@example.com",
        "x" * 65 + "@example.com",
        "ada@" + "a" * 250 + ".com",
    ],
)
def test_what_cannot_be_an_address_is_refused_with_a_reason(address: str) -> None:
    with pytest.raises(InvalidEmail) as refused:
        canonical_email(address)
    assert str(refused.value)
    assert email_lookup_key(address) == unicodedata.normalize("NFC", address.strip().lower())  # never raises


def test_a_search_term_is_looked_for_in_the_stored_form() -> None:
    assert "xn--exmple-cua" in email_search_keys("Exämple")
    assert "ünï@xn--exmple-cua.com" in email_search_keys(unicodedata.normalize("NFD", "ÜNÏ@exämple.com"))
    assert email_search_keys("ADA") == frozenset({"ada"})


@pytest.mark.parametrize(
    "name", ["Eve\r\nBcc: x@y", "Eve\n", "\x00", "Eve\x1b", "Eve\x85", "Eve\u2028", "Eve\u2029", "Eve\u202e", "\t"]
)
def test_a_display_name_with_a_control_character_is_refused_and_printed_on_one_line(name: str) -> None:
    with pytest.raises(InvalidDisplayName):
        check_display_name(name)
    printed = printable_name(name)
    assert printed == " ".join(printed.split())
    assert all(unicodedata.category(character)[0] != "C" for character in printed)


def test_a_display_name_is_kept_in_nfc_and_trimmed() -> None:
    assert check_display_name(unicodedata.normalize("NFD", "  Zoë Ünï ")) == "Zoë Ünï"
    with pytest.raises(InvalidDisplayName):
        check_display_name("   ")
