"""The users HTTP API: parse, authorize, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter, URLEncodedBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from shared.auth import AccessTokenSigner, CurrentUser, admin_only, jwk_from_public_key, signed_in
from shared.boundary import NO_STORE, PRAGMA_NO_CACHE
from shared.errors import Conflict, Forbidden, TooManyRequests, Unprocessable
from shared.pagination import PageRequest
from users.schemas import (
    AdminUserUpdate,
    LoginForm,
    LoginRequest,
    ProfileUpdate,
    RefreshRequest,
    RegisterUser,
    TokenPair,
    UserOut,
    UserPage,
)
from users.service import UserService
from users.sign_in import SignInService

__all__ = ("AdminUserController", "AuthController", "KeysController", "ProfileController")

Users = NamedDependency[UserService]
SignIn = NamedDependency[SignInService]
ClientAddress = NamedDependency[str]
"""The client's address behind trusted proxies (``shared.client_address``), from ``shared.app``."""


class AuthController(Controller):
    """Sign-up, sign-in and the refresh-token lifecycle."""

    path = "/auth"
    tags = ["auth"]
    # Its answers carry tokens (and account data): no cache keeps them.
    cache_control = NO_STORE
    response_headers = [PRAGMA_NO_CACHE]

    @post(
        "/register",
        status_code=HTTP_201_CREATED,
        operation_id="register",
        domain_errors=(Conflict, Unprocessable, TooManyRequests),
    )
    async def register(self, data: JSONBody[RegisterUser], users: Users, client_address: ClientAddress) -> UserOut:
        """Create an account. The email must be new (case does not matter). Rate-limited per client address."""
        return await users.register(data, client_address=client_address)

    @post("/login", status_code=HTTP_200_OK, operation_id="login", domain_errors=(TooManyRequests,))
    async def login(self, data: JSONBody[LoginRequest], sign_in: SignIn, client_address: ClientAddress) -> TokenPair:
        """Sign in with email and password as JSON. Rate-limited per account and per client address."""
        return await sign_in.login(email=data.email, password=data.password, client_address=client_address)

    @post(
        "/token",
        status_code=HTTP_200_OK,
        operation_id="token",
        domain_errors=(TooManyRequests,),
        oauth2_token_endpoint=True,  # HTTP Basic client credentials are accepted (and ignored) here
    )
    async def token(self, data: URLEncodedBody[LoginForm], sign_in: SignIn, client_address: ClientAddress) -> TokenPair:
        """Sign in with the OAuth2 password grant form (``username`` is the email)."""
        return await sign_in.login(email=data.username, password=data.password, client_address=client_address)

    @post("/refresh", status_code=HTTP_200_OK, operation_id="refresh")
    async def refresh(self, data: JSONBody[RefreshRequest], sign_in: SignIn) -> TokenPair:
        """Trade a refresh token for a new pair. Each refresh token works once."""
        return await sign_in.refresh(data.refresh_token)

    @post("/logout", status_code=HTTP_204_NO_CONTENT, operation_id="logout")
    async def logout(self, data: JSONBody[RefreshRequest], sign_in: SignIn) -> None:
        """Revoke the refresh token and every token rotated from the same sign-in."""
        await sign_in.logout(data.refresh_token)


class KeysController(Controller):
    """The public keys other services verify access tokens with."""

    path = "/.well-known"
    tags = ["auth"]

    @get("/jwks.json", sync_to_thread=False, cache_control=None, operation_id="getJwks")
    def jwks(self, signer: NamedDependency[AccessTokenSigner]) -> dict[str, list[dict[str, str]]]:
        """The JSON Web Key Set of the access-token signing key."""
        return {"keys": [jwk_from_public_key(signer.public_key)]}


class ProfileController(Controller):
    """The signed-in user's own account."""

    path = "/users/me"
    tags = ["profile"]
    guards = [signed_in]

    @get("/", operation_id="getOwnProfile")
    async def show(self, user: CurrentUser, users: Users) -> UserOut:
        """Your account."""
        return await users.get_active(user.id)

    @patch("/", operation_id="updateOwnProfile", domain_errors=(Forbidden, Conflict, Unprocessable, TooManyRequests))
    async def update(
        self, data: JSONBody[ProfileUpdate], user: CurrentUser, users: Users, client_address: ClientAddress
    ) -> UserOut:
        """Change your display name, email or password (the last two need ``current_password``).

        Wrong ``current_password`` guesses are counted and limited like failed sign-ins.
        """
        return await users.update_profile(user.id, data, client_address=client_address)

    @delete("/", status_code=HTTP_204_NO_CONTENT, operation_id="deactivateOwnAccount")
    async def deactivate(self, user: CurrentUser, users: Users) -> None:
        """Deactivate your account: you can no longer sign in and every refresh token is revoked."""
        await users.deactivate(user.id)


class AdminUserController(Controller):
    """Administration of every account."""

    path = "/users"
    tags = ["admin"]
    guards = [admin_only]

    @get("/", operation_id="listUsers")
    async def list_users(
        self,
        users: Users,
        page: NamedDependency[PageRequest],
        q: Annotated[str | None, QueryParameter(max_length=100, description="Search email and name.")] = None,
    ) -> UserPage:
        """Accounts, newest first, optionally filtered by a search term."""
        return await users.list(search=q, page=page)

    @get("/{user_id:uuid}", operation_id="getUser")
    async def show_user(self, user_id: FromPath[uuid.UUID], users: Users) -> UserOut:
        """One account."""
        return await users.get(user_id)

    @patch("/{user_id:uuid}", operation_id="updateUser", domain_errors=(Conflict,))
    async def update_user(
        self, user_id: FromPath[uuid.UUID], data: JSONBody[AdminUserUpdate], user: CurrentUser, users: Users
    ) -> UserOut:
        """Change an account's role or active flag."""
        return await users.administer(user, user_id, data)
