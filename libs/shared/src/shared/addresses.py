"""Email addresses and display names: one canonical form, checked once at the edge, used everywhere.

An address is compared, stored and sent in one form, so that look-alikes (the same text in NFC and
NFD, in another case, with a Unicode or an ASCII-compatible domain) are one account and not two:

* the whole address is put in Unicode NFC and trimmed;
* the local part is lower-cased (the project has always compared addresses without regard to case);
* the domain goes through IDNA 2008 with the UTS 46 mapping and is kept as its ASCII form
  (``exämple.com`` → ``xn--exmple-cua.com``), which every mail server accepts; an invalid domain is
  refused rather than guessed at.

Non-ASCII local parts (``ünï@…``, RFC 6531) are accepted: they are real addresses, and notify sends
them with ``SMTPUTF8`` when the mail server offers it (and fails that one delivery, saying why, when
it does not). Control characters, whitespace and line breaks are never part of an address.

Display names travel into email headers: they may hold any printable text, but no control
character, line or paragraph separator, or bidirectional override (which can make a name read
as something else).
"""

from __future__ import annotations

import contextlib
import unicodedata

import idna

__all__ = (
    "InvalidDisplayName",
    "InvalidEmail",
    "canonical_email",
    "check_display_name",
    "display_name_problem",
    "email_lookup_key",
    "email_search_keys",
    "printable_name",
)

_MAX_ADDRESS = 254
"""RFC 5321's path limit (256) minus the angle brackets."""
_MAX_LOCAL_OCTETS = 64
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Control characters (C0, DEL, C1: CR, LF, NUL, NEL...), lone surrogates, line and paragraph separators."""
_ADDRESS_SPECIALS = frozenset('"(),:;<>[\\]')
"""Characters that make an address need quoting (RFC 5322 §3.2.3): refused, no real mailbox needs them."""


class InvalidEmail(ValueError):
    """Not an email address this system can store and send to; the message says why, for people."""


class InvalidDisplayName(ValueError):
    """A display name holding a character that must not reach an email header."""


def _refused_character(value: str) -> str | None:
    for character in value:
        if unicodedata.category(character) in _REFUSED_CATEGORIES or character in _BIDI_CONTROLS:
            return f"U+{ord(character):04X}"
    return None


def canonical_email(value: str) -> str:
    """The one stored and compared form of an email address.

    Idempotent: the canonical form of a canonical address is itself.

    Args:
        value: An address as a person typed it.

    Returns:
        NFC, lower-case local part, ASCII (IDNA) domain: ``Ünï@Exämple.com`` → ``ünï@xn--exmple-cua.com``.

    Raises:
        InvalidEmail: Not an address (no ``@``, empty part, control character, whitespace, quoting
            characters, a domain IDNA refuses, too long).
    """
    text = unicodedata.normalize("NFC", value.strip())
    if refused := _refused_character(text):
        raise InvalidEmail(f"an email address cannot contain the control character {refused}")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise InvalidEmail("an email address looks like name@example.com")
    if any(character.isspace() or character in _ADDRESS_SPECIALS or character == "@" for character in local):
        raise InvalidEmail("the part before @ cannot contain spaces, quotes, brackets or a second @")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidEmail("the part before @ cannot start or end with a dot, or hold two dots in a row")
    local = unicodedata.normalize("NFC", local.lower())
    if len(local.encode()) > _MAX_LOCAL_OCTETS:
        raise InvalidEmail(f"the part before @ is longer than {_MAX_LOCAL_OCTETS} bytes")
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as error:
        raise InvalidEmail(f"the domain {domain!r} is not a valid domain name ({error})") from None
    if "." not in ascii_domain:
        raise InvalidEmail("the domain of an email address has at least one dot, as in example.com")
    address = f"{local}@{ascii_domain}"
    if len(address.encode()) > _MAX_ADDRESS:
        raise InvalidEmail(f"an email address has at most {_MAX_ADDRESS} bytes")
    return address


def email_lookup_key(value: str) -> str:
    """The form to look an address up by (sign-in, search): canonical when it is an address at all.

    Text that is no valid address cannot belong to an account; it is still folded the same way
    (NFC, trimmed, lower-case), so a lookup never fails differently for a look-alike.
    """
    try:
        return canonical_email(value)
    except InvalidEmail:
        return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value.strip()).lower())


def email_search_keys(term: str) -> frozenset[str]:
    """What a search for ``term`` looks for in stored (canonical) addresses.

    The term folded as addresses are (NFC, lower case), its canonical form when it is a whole
    address, and its ASCII (IDNA) form when it is part of a domain: ``Exämple`` finds
    ``…@xn--exmple-cua.com``.
    """
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", term.strip()).lower())
    keys = {folded, email_lookup_key(term)}
    if "@" not in folded and not folded.isascii():
        # Not a domain: the folded text is all there is to look for.
        with contextlib.suppress(idna.IDNAError, UnicodeError):
            keys.add(idna.encode(folded, uts46=True).decode("ascii"))
    return frozenset(key for key in keys if key)


def display_name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a display name, or None when it can."""
    if refused := _refused_character(value):
        return f"a display name cannot contain the control character {refused}"
    return None


def check_display_name(value: str) -> str:
    """The stored form of a display name: NFC and trimmed.

    Raises:
        InvalidDisplayName: It holds a control character, a line break or a bidirectional override,
            or is empty once trimmed.
    """
    if problem := display_name_problem(value):
        raise InvalidDisplayName(problem)
    name = unicodedata.normalize("NFC", value.strip())
    if not name:
        raise InvalidDisplayName("a display name needs at least one visible character")
    return name


def printable_name(value: str) -> str:
    """``value`` made safe for a header whatever it holds (rows written before the edge checked).

    Every refused character becomes a space and whitespace runs fold into one: a name from an old
    event can never add a line or a header to an email.
    """
    cleaned = "".join(
        " " if unicodedata.category(c) in _REFUSED_CATEGORIES or c in _BIDI_CONTROLS else c for c in value
    )
    return " ".join(cleaned.split())
