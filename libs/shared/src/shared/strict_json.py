"""JSON bodies are read with the types the OpenAPI document promises, not loosely.

Litestar converts a handler's decoded body with ``msgspec.convert(..., strict=False)``, because
the same step parses query strings, where every value is text. For a JSON body that is too
lenient: ``"is_active": 0`` becomes ``False``, ``"price": "100"`` becomes ``100``, while the
document says boolean and integer. A client written against the document never sends those; a
client that does has a bug the API should name. So every JSON body is first decoded strictly
against the handler's ``data`` type, and a mismatch is a 400 naming the field (the problem
document of ``shared.errors``); Litestar's own decoding then runs as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException

if TYPE_CHECKING:
    from litestar import Request

__all__ = ("refuse_loose_json",)

_decoders: dict[int, msgspec.json.Decoder[Any] | None] = {}


def _decoder_for(request: Request[Any, Any, Any]) -> msgspec.json.Decoder[Any] | None:
    handler = request.route_handler
    key = id(handler)
    if key not in _decoders:
        decoder: msgspec.json.Decoder[Any] | None = None
        field = handler.parsed_data_field
        media_type = getattr(field.kwarg_definition, "media_type", None) if field is not None else None
        if field is not None and media_type in (None, RequestEncodingType.JSON):
            try:
                decoder = msgspec.json.Decoder(field.annotation, strict=True)
            except TypeError:  # a type msgspec cannot decode by itself: Litestar's decoding only
                decoder = None
        _decoders[key] = decoder
    return _decoders[key]


async def refuse_loose_json(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: a JSON body whose values have other types than documented is a 400.

    Raises:
        ValidationException: A value of the wrong type (the message names where it is).
    """
    decoder = _decoder_for(request)
    if decoder is None:
        return
    body = await request.body()
    if not body:
        return  # no body: Litestar's own validation says what is missing
    try:
        decoder.decode(body)
    except msgspec.ValidationError as error:
        raise ValidationException(
            detail=str(error), extra=[{"key": "data", "source": "body", "message": str(error)}]
        ) from error
    except msgspec.DecodeError:
        return  # not JSON at all: Litestar answers that itself
