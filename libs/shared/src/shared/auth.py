"""Access tokens: Ed25519 (EdDSA) JWTs signed by users, verified everywhere with the public key.

Only the users service is configured with a private key. Every service verifies tokens with the
public key from its settings, or with the keys users publishes at ``/.well-known/jwks.json``.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeAlias

import jwt
import msgspec
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from litestar.di import NamedDependency
from litestar.middleware import ASGIMiddleware

from shared.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from litestar.connection import ASGIConnection
    from litestar.handlers import BaseRouteHandler
    from litestar.types import ASGIApp, Receive, Scope, Send

    from shared.revocations import TokenRevocations

__all__ = (
    "ADMIN_ROLE",
    "AccessTokenSigner",
    "AuthenticationMiddleware",
    "CurrentUser",
    "Principal",
    "TokenVerifier",
    "admin_only",
    "generate_private_key_pem",
    "jwk_from_public_key",
    "key_id",
    "keys_from_jwks",
    "load_public_keys",
    "provide_current_user",
    "signed_in",
)

ADMIN_ROLE = "admin"
ALGORITHM = "EdDSA"
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]

log = structlog.get_logger("shared.auth")


class Principal(msgspec.Struct, frozen=True):
    """Who is calling, as proven by a verified access token."""

    id: uuid.UUID
    roles: frozenset[str]
    token_id: str
    expires_at: int
    issued_at_us: int = 0
    """When the token was issued, in microseconds since the epoch: ``iat_us``, or ``iat`` for tokens
    without it. Compared with the account's ``tokens_valid_after`` (``shared.revocations``)."""

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds the admin role."""
        return ADMIN_ROLE in self.roles


CurrentUser: TypeAlias = NamedDependency[Principal]
"""Annotate a handler parameter named ``user`` with this to receive the signed-in caller."""


def generate_private_key_pem() -> str:
    """A new Ed25519 private key in PKCS#8 PEM, for ``users`` and for tests."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of ``key``, used as the token header's ``kid``."""
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{_b64url(_raw_public_bytes(key))}"}}'
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def jwk_from_public_key(key: Ed25519PublicKey) -> dict[str, str]:
    """The public JWK (RFC 8037) of an Ed25519 key."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(_raw_public_bytes(key)),
        "kid": key_id(key),
        "alg": ALGORITHM,
        "use": "sig",
    }


def load_public_keys(pem_text: str) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in ``pem_text`` (several PEM blocks may follow each other)."""
    keys: list[Ed25519PublicKey] = []
    marker = "-----END PUBLIC KEY-----"
    for block in pem_text.split(marker):
        if "-----BEGIN PUBLIC KEY-----" not in block:
            continue
        key = serialization.load_pem_public_key((block.strip() + "\n" + marker + "\n").encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("only Ed25519 public keys can verify access tokens")
        keys.append(key)
    return keys


def keys_from_jwks(document: dict[str, Any]) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document; keys of other types are skipped."""
    keys = []
    for jwk in document.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
    return keys


class AccessTokenSigner:
    """Signs access tokens. Only the users service (and tests) hold a private key."""

    def __init__(self, private_key_pem: str, *, issuer: str, audiences: Sequence[str], ttl_seconds: int) -> None:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the access token key must be an Ed25519 private key")
        self._private_key = key
        self.public_key = key.public_key()
        self.kid = key_id(self.public_key)
        self.issuer = issuer
        self.audiences = list(audiences)
        self.ttl_seconds = ttl_seconds

    def public_key_pem(self) -> str:
        """The public half, in PEM, for services configured with a key rather than a JWKS URL."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(
        self,
        *,
        subject: uuid.UUID,
        roles: Iterable[str],
        now: int | None = None,
        issued_at_us: int | None = None,
        **extra: Any,
    ) -> str:
        """An access token for ``subject`` valid for ``ttl_seconds`` from when it is issued.

        Args:
            subject: The account.
            roles: Its roles now.
            now: The issue time in whole seconds (``iat``); by default the clock's.
            issued_at_us: The issue time in microseconds (``iat_us``); by default ``now``'s, or the clock's.
                ``iat`` has whole seconds only, too coarse to tell a token issued just before a
                revocation from one issued just after it in the same second.
            extra: More claims.
        """
        if issued_at_us is None:
            issued_at_us = time.time_ns() // 1000 if now is None else now * 1_000_000
        issued_at = issued_at_us // 1_000_000 if now is None else now
        claims = {
            "iss": self.issuer,
            "aud": self.audiences,
            "sub": str(subject),
            "roles": sorted(roles),
            "iat": issued_at,
            "iat_us": issued_at_us,
            "exp": issued_at + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            **extra,
        }
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid})


class TokenVerifier:
    """Verifies access tokens against known public keys, fetching users' JWKS when configured.

    A verified token's claims cannot change during its lifetime, so the principal is cached
    until the token expires: the signature check happens once per token, not once per request.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        public_keys: Iterable[Ed25519PublicKey] = (),
        jwks_url: str = "",
        leeway_seconds: int = 10,
        cache_size: int = 10_000,
        jwks_refresh_interval: float = 60.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._keys = {key_id(key): key for key in public_keys}
        self._jwks_url = jwks_url
        self._leeway = leeway_seconds
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._jwks_refresh_interval = jwks_refresh_interval
        self._jwks_fetched_at = -jwks_refresh_interval
        if not self._keys and not jwks_url:
            raise ValueError("a token verifier needs public keys or a JWKS URL")

    async def verify(self, token: str) -> Principal:
        """The principal a valid token proves.

        Raises:
            Unauthorized: The token is malformed, forged, expired, or not meant for this service.
        """
        now = int(time.time())
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + self._leeway >= now:
                return cached
            del self._cache[token]
        key = await self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
            principal = Principal(
                id=uuid.UUID(claims["sub"]),
                roles=frozenset(str(role) for role in claims.get("roles", [])),
                token_id=str(claims["jti"]),
                expires_at=int(claims["exp"]),
                issued_at_us=_issued_at_us(claims),
            )
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise Unauthorized(f"Invalid access token: {error}") from error
        self._cache[token] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _key_for(self, token: str) -> Ed25519PublicKey:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as error:
            raise Unauthorized("Malformed access token.") from error
        if kid not in self._keys and self._jwks_url:
            await self._refresh_jwks()
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise Unauthorized("Access token signed by an unknown key.")

    async def _refresh_jwks(self) -> None:
        # An unknown kid from a caller must not turn into a flood of requests to users.
        if time.monotonic() - self._jwks_fetched_at < self._jwks_refresh_interval:
            return
        self._jwks_fetched_at = time.monotonic()
        # Imported here: the manifests mount public keys, so most API processes never need httpx
        # (4 MB of memory, with its CLI's imports).
        import httpx

        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(self._jwks_url)
                response.raise_for_status()
            for key in keys_from_jwks(response.json()):
                self._keys[key_id(key)] = key
        except (httpx.HTTPError, ValueError, KeyError) as error:
            log.warning("jwks fetch failed", url=self._jwks_url, error=str(error))


def _issued_at_us(claims: dict[str, Any]) -> int:
    precise = claims.get("iat_us")
    # Without ``iat_us`` (a token from before it existed), the start of its ``iat`` second: the
    # earliest it can have been issued, so a revocation in that same second refuses it.
    if isinstance(precise, int) and not isinstance(precise, bool) and precise // 1_000_000 == int(claims["iat"]):
        return precise
    return int(claims["iat"]) * 1_000_000


class AuthenticationMiddleware(ASGIMiddleware):
    """Puts the verified caller in ``scope["user"]`` when a bearer token is present.

    A request without a token passes through anonymous (guards decide whether that is enough);
    a request with an invalid token is refused at once with 401, and so is a token issued before
    its account's tokens were revoked, when ``revocations`` is given.

    An OAuth2 token endpoint (a handler with ``opt["oauth2_token_endpoint"]``) also takes HTTP
    Basic client credentials (RFC 6749 §2.3.1; Swagger UI sends them, empty, by default): there
    they authenticate a client, not a user, and the request goes on anonymous.
    """

    def __init__(self, verifier: TokenVerifier, revocations: TokenRevocations | None = None) -> None:
        self.verifier = verifier
        self.revocations = revocations

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Verify the bearer token, if any, then call the next app."""
        scope["user"] = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                handler = scope.get("route_handler")
                if scheme.lower() == "basic" and handler is not None and handler.opt.get("oauth2_token_endpoint"):
                    break
                if scheme.lower() != "bearer" or not token.strip():
                    raise Unauthorized("Use 'Authorization: Bearer <access token>'.")
                principal = await self.verifier.verify(token.strip())
                if self.revocations is not None:
                    self.revocations.check(principal)
                scope["user"] = principal
                break
        await next_app(scope, receive, send)


def _principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    user = connection.scope.get("user")
    return user if isinstance(user, Principal) else None


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: the caller presented a valid access token.

    Guards are ``async`` though they never await: Litestar runs a plain ``def`` guard in its thread
    pool, a hop to another thread and back on every request for a dict lookup.
    """
    if _principal(connection) is None:
        raise Unauthorized("Sign in first: this endpoint needs a bearer access token.")


async def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: the caller is signed in and holds the admin role (``async``: see ``signed_in``)."""
    principal = _principal(connection)
    if principal is None:
        raise Unauthorized("Sign in first: this endpoint needs a bearer access token.")
    if not principal.is_admin:
        raise Forbidden("Only administrators may do this.")


async def provide_current_user(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """Dependency ``user``: the signed-in caller (401 when there is none)."""
    principal = _principal(request)
    if principal is None:
        raise Unauthorized("Sign in first: this endpoint needs a bearer access token.")
    return principal
