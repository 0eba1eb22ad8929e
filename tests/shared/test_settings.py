from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from shared.settings import ServiceSettings, SettingsError, load_settings

if TYPE_CHECKING:
    from pathlib import Path


class ShopSettings(ServiceSettings, kw_only=True, frozen=True):
    api_key: str = ""
    retries: int = 3


def test_settings_come_from_prefixed_variables_with_types() -> None:
    settings = load_settings(
        ShopSettings,
        "SHOP",
        {
            "SHOP_DATABASE_URL": "postgresql+asyncpg://shop@db/shop",
            "SHOP_RETRIES": "7",
            "SHOP_LOG_JSON": "false",
            "SHOP_CORS_ALLOW_ORIGINS": "https://a.example, https://b.example",
            "OTHER_RETRIES": "99",
        },
    )
    assert settings.database_url == "postgresql+asyncpg://shop@db/shop"
    assert settings.retries == 7
    assert settings.log_json is False
    assert settings.cors_allow_origins == ("https://a.example", "https://b.example")
    assert settings.http_port == 8000


def test_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("s3cr3t\n")
    settings = load_settings(
        ShopSettings, "SHOP", {"SHOP_DATABASE_URL": "postgresql://x", "SHOP_API_KEY_FILE": str(secret)}
    )
    assert settings.api_key == "s3cr3t"


def test_variable_wins_over_file(tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("from-file")
    settings = load_settings(
        ShopSettings,
        "SHOP",
        {"SHOP_DATABASE_URL": "postgresql://x", "SHOP_API_KEY": "direct", "SHOP_API_KEY_FILE": str(secret)},
    )
    assert settings.api_key == "direct"


def test_missing_required_setting_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match=r"^SHOP_DATABASE_URL is not set$"):
        load_settings(ShopSettings, "SHOP", {})


def test_wrong_type_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match=r"^SHOP_RETRIES: expected int, got 'many'$"):
        load_settings(ShopSettings, "SHOP", {"SHOP_DATABASE_URL": "postgresql://x", "SHOP_RETRIES": "many"})


def test_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SHOP_API_KEY_FILE"):
        load_settings(
            ShopSettings, "SHOP", {"SHOP_DATABASE_URL": "postgresql://x", "SHOP_API_KEY_FILE": str(tmp_path / "nope")}
        )


def test_an_empty_required_setting_counts_as_missing() -> None:
    with pytest.raises(SettingsError, match=r"^SHOP_DATABASE_URL is empty$"):
        load_settings(ShopSettings, "SHOP", {"SHOP_DATABASE_URL": "  "})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SHOP_HTTP_PORT", "abc", "SHOP_HTTP_PORT: expected int, got 'abc'"),
        ("SHOP_LOG_JSON", "maybe", "SHOP_LOG_JSON: expected bool, got 'maybe'"),
        ("SHOP_OUTBOX_POLL_SECONDS", "soon", "SHOP_OUTBOX_POLL_SECONDS: expected float, got 'soon'"),
        ("SHOP_DATABASE_URL", "not a url", "SHOP_DATABASE_URL: not a database URL"),
        ("SHOP_NATS_URL", " , ", "SHOP_NATS_URL: no NATS server URL given"),
        ("SHOP_NATS_URL", "http://nats:4222", "SHOP_NATS_URL: 'http://nats:4222' is not a NATS URL"),
        ("SHOP_NATS_URL", "nats://nats:port", "SHOP_NATS_URL: 'nats://nats:port' has an invalid port"),
    ],
)
def test_each_invalid_value_names_its_variable_on_one_line(variable: str, value: str, message: str) -> None:
    environ = {"SHOP_DATABASE_URL": "postgresql+asyncpg://shop@db/shop", variable: value}
    with pytest.raises(SettingsError) as raised:
        load_settings(ShopSettings, "SHOP", environ)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_secret_file_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    secret = tmp_path / "binary"
    secret.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SettingsError, match=r"^SHOP_DATABASE_URL_FILE: cannot read "):
        load_settings(ShopSettings, "SHOP", {"SHOP_DATABASE_URL_FILE": str(secret)})


def test_keys_that_cannot_be_used_are_refused_when_loaded() -> None:
    from shared.auth import generate_private_key_pem

    base = {"SHOP_DATABASE_URL": "postgresql://x"}
    private = generate_private_key_pem()
    assert load_settings(UsersLike, "SHOP", {**base, "SHOP_JWT_PRIVATE_KEY": private}).jwt_private_key == private
    with pytest.raises(SettingsError, match=r"^SHOP_JWT_PRIVATE_KEY: not an unencrypted Ed25519 private key"):
        load_settings(UsersLike, "SHOP", {**base, "SHOP_JWT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nxx"})
    with pytest.raises(SettingsError, match=r"^SHOP_JWT_PUBLIC_KEYS: holds no PEM public key"):
        load_settings(UsersLike, "SHOP", {**base, "SHOP_JWT_PUBLIC_KEYS": "ssh-ed25519 AAAA"})
    with pytest.raises(SettingsError, match=r"^SHOP_JWT_PUBLIC_KEYS: holds a PEM block that is not an Ed25519"):
        load_settings(
            UsersLike,
            "SHOP",
            {**base, "SHOP_JWT_PUBLIC_KEYS": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
        )


class UsersLike(ServiceSettings, kw_only=True, frozen=True):
    jwt_private_key: str = ""
