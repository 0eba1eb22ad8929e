from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.auth import (
    AccessTokenSigner,
    TokenVerifier,
    generate_private_key_pem,
    jwk_from_public_key,
    load_public_keys,
)
from shared.errors import Unauthorized


def signer(audiences: list[str] | None = None) -> AccessTokenSigner:
    return AccessTokenSigner(
        generate_private_key_pem(), issuer="users", audiences=audiences or ["orders"], ttl_seconds=60
    )


async def test_verifier_accepts_tokens_from_any_configured_key_for_rotation() -> None:
    old, new = signer(), signer()
    pem = old.public_key_pem() + new.public_key_pem()
    verifier = TokenVerifier(issuer="users", audience="orders", public_keys=load_public_keys(pem))
    subject = uuid.uuid4()
    assert (await verifier.verify(old.sign(subject=subject, roles=["user"]))).id == subject
    assert (await verifier.verify(new.sign(subject=subject, roles=["admin"]))).is_admin


async def test_verifier_refuses_tokens_for_another_audience() -> None:
    issuer = signer(audiences=["notify"])
    verifier = TokenVerifier(issuer="users", audience="orders", public_keys=[issuer.public_key])
    with pytest.raises(Unauthorized):
        await verifier.verify(issuer.sign(subject=uuid.uuid4(), roles=[]))


async def test_expired_token_is_unauthorized() -> None:
    issuer = signer()
    verifier = TokenVerifier(issuer="users", audience="orders", public_keys=[issuer.public_key], leeway_seconds=0)
    token = issuer.sign(subject=uuid.uuid4(), roles=[], now=1)
    with pytest.raises(Unauthorized):
        await verifier.verify(token)


def test_verifier_needs_a_key_source() -> None:
    with pytest.raises(ValueError, match="public keys or a JWKS URL"):
        TokenVerifier(issuer="users", audience="orders")


async def test_verifier_fetches_unknown_keys_from_the_jwks_url() -> None:
    issuer = signer()
    document = json.dumps({"keys": [jwk_from_public_key(issuer.public_key)]}).encode()
    requests: list[str] = []

    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        verifier = TokenVerifier(issuer="users", audience="orders", jwks_url=url)
        subject = uuid.uuid4()
        assert (await verifier.verify(issuer.sign(subject=subject, roles=[]))).id == subject
        with pytest.raises(Unauthorized, match="unknown key"):
            await verifier.verify(signer().sign(subject=subject, roles=[]))
        assert requests == ["/.well-known/jwks.json"]  # the unknown key did not trigger a second fetch at once
    finally:
        server.shutdown()
        server.server_close()
