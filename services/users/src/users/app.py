"""The users app: identities and the keys that sign access tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncSession

from shared.app import ServiceApp, create_service_app
from shared.auth import AccessTokenSigner, TokenVerifier
from shared.db import ServiceDatabase
from shared.revocations import TokenRevocations
from users.models import OUTBOX, Base, User
from users.passwords import PasswordHasher
from users.routes import AdminUserController, AuthController, KeysController, ProfileController
from users.service import UserService
from users.settings import UsersSettings, load_users_settings
from users.sign_in import SignInService

if TYPE_CHECKING:
    from litestar import Litestar

__all__ = ("DATABASE", "create_app", "create_signer")

DATABASE = ServiceDatabase(Base.metadata, migrations="users:migrations")


def create_signer(settings: UsersSettings) -> AccessTokenSigner:
    """The access-token signer from the configured private key."""
    if not settings.jwt_private_key:
        raise RuntimeError("USERS_JWT_PRIVATE_KEY (or USERS_JWT_PRIVATE_KEY_FILE) must hold an Ed25519 private key")
    return AccessTokenSigner(
        settings.jwt_private_key,
        issuer=settings.jwt_issuer,
        audiences=settings.jwt_audiences,
        ttl_seconds=settings.access_token_ttl_seconds,
    )


def create_app(
    settings: UsersSettings | None = None, *, null_pool: bool = False, hasher: PasswordHasher | None = None
) -> Litestar:
    """Build the users app (granian calls this with no arguments: settings come from ``USERS_*``).

    Args:
        settings: By default, from ``USERS_*`` variables.
        null_pool: A new database connection per session (tests that run the app on another loop).
        hasher: The password hasher; by default one with the configured argon2 costs, closed with the app.
    """
    settings = settings or load_users_settings()
    signer = create_signer(settings)
    on_shutdown = []
    if hasher is None:
        hasher = PasswordHasher.from_settings(settings)
        on_shutdown.append(hasher.close)

    def provide_users(db_session: NamedDependency[AsyncSession]) -> UserService:
        return UserService(session=db_session, settings=settings, hasher=hasher, outbox=OUTBOX)

    def provide_sign_in(db_session: NamedDependency[AsyncSession]) -> SignInService:
        return SignInService(session=db_session, settings=settings, signer=signer, hasher=hasher, outbox=OUTBOX)

    return create_service_app(
        ServiceApp(
            name="users",
            version="1.0.0",
            description="Registration, sign-in, access tokens (EdDSA JWTs with a JWKS), profiles and administration.",
            settings=settings,
            database=DATABASE,
            route_handlers=[AuthController, KeysController, ProfileController, AdminUserController],
            dependencies={
                "users": Provide(provide_users, sync_to_thread=False),
                "sign_in": Provide(provide_sign_in, sync_to_thread=False),
                "signer": Provide(lambda: signer, sync_to_thread=False),
            },
            token_verifier=TokenVerifier(
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience or "users",
                public_keys=[signer.public_key],
            ),
            null_pool=null_pool,
            # users checks its own table: the account's tokens_valid_after, reloaded every poll.
            token_revocations=TokenRevocations(
                User.id, User.tokens_valid_after, poll_seconds=settings.token_revocation_poll_seconds
            ),
            token_url="/auth/token",  # noqa: S106 - an endpoint path, not a password
            on_shutdown=on_shutdown,
        )
    )
