"""shared.strict_json: each route decodes its own body type, in every app a process builds."""

from __future__ import annotations

import gc

import msgspec
from litestar import Litestar, post
from litestar.params import JSONBody
from litestar.testing import TestClient

from shared.strict_json import refuse_loose_json


class Login(msgspec.Struct, forbid_unknown_fields=True):
    email: str


class Product(msgspec.Struct, forbid_unknown_fields=True):
    sku: str


def _app(body_type: type[msgspec.Struct]) -> Litestar:
    async def create(data: msgspec.Struct) -> None:
        return None

    create.__annotations__["data"] = JSONBody[body_type]  # type: ignore[misc,valid-type]  # chosen per app
    return Litestar([post("/things", status_code=200)(create)], before_request=refuse_loose_json)


def test_apps_built_one_after_another_each_decode_their_own_body_type() -> None:
    for _ in range(20):  # freed handlers' ids are reused: a cache keyed by id alone mixes the apps up
        for body_type, body in ((Login, {"email": "a@example.com"}), (Product, {"sku": "A-1"})):
            with TestClient(_app(body_type)) as client:
                assert client.post("/things", json=body).status_code == 200
            gc.collect()


def test_loose_types_are_refused_and_options_is_answered() -> None:
    with TestClient(_app(Product)) as client:
        assert client.post("/things", json={"sku": 1}).status_code == 400
        assert client.options("/things").status_code == 204
