"""JSON bodies are read with the types the OpenAPI document promises, not loosely.

Litestar converts a handler's decoded body with ``msgspec.convert(..., strict=False)``, because
the same step parses query strings, where every value is text. For a JSON body that is too
lenient: ``"is_active": 0`` becomes ``False``, ``"price": "100"`` becomes ``100``, while the
document says boolean and integer. A client written against the document never sends those; a
client that does has a bug the API should name. So every JSON body is first decoded strictly
against the handler's ``data`` type, and a mismatch is a 400 naming the field (the problem
document of ``shared.errors``); Litestar's own decoding then runs as before.

Strict, but by JSON Schema's rules: a number with a zero fraction (``3.0``) is an integer there,
so it is accepted where an integer is documented.

The strict check is one typed decode in msgspec's C code (a decoder per body type, made once);
only a body it refuses is decoded again loosely, to tell an integral float from a real mistake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException

if TYPE_CHECKING:
    from litestar import Request

__all__ = ("refuse_loose_json",)

# Keyed by id(), with the handler kept in the value: a process that builds several apps (tests do)
# would otherwise free handlers, and a reused id would decode one route's body with another route's
# type. (Not a WeakKeyDictionary: Litestar's generated OPTIONS handlers cannot be weakly referenced.)
_types: dict[int, tuple[Any, msgspec.json.Decoder[Any] | None]] = {}


def _strict_decoder(request: Request[Any, Any, Any]) -> msgspec.json.Decoder[Any] | None:
    """A strict decoder of the handler's JSON body type; None: no body, not JSON, or not a type msgspec knows."""
    handler = request.route_handler
    known = _types.get(id(handler))
    if known is None or known[0] is not handler:
        decoder = None
        field = handler.parsed_data_field
        media_type = getattr(field.kwarg_definition, "media_type", None) if field is not None else None
        if field is not None and media_type in (None, RequestEncodingType.JSON):
            try:
                decoder = msgspec.json.Decoder(field.annotation, strict=True)
            except TypeError:  # a type msgspec cannot decode by itself: Litestar's decoding only
                decoder = None
        known = _types[id(handler)] = (handler, decoder)
    return known[1]


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    return value


async def refuse_loose_json(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: a JSON body whose values have other types than documented is a 400.

    Raises:
        ValidationException: A value of the wrong type (the message names where it is).
    """
    decoder = _strict_decoder(request)
    if decoder is None:
        return
    body = await request.body()
    if not body:
        return  # no body: Litestar's own validation says what is missing
    try:
        decoder.decode(body)
    except msgspec.ValidationError:
        pass  # maybe only an integral float where an integer is documented: look closer below
    except msgspec.DecodeError:
        return  # not JSON at all: Litestar answers that itself
    else:
        return
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return
    try:
        msgspec.convert(_integral_floats_as_ints(value), decoder.type, strict=True)
    except msgspec.ValidationError as error:
        raise ValidationException(
            detail=str(error), extra=[{"key": "data", "source": "body", "message": str(error)}]
        ) from error
