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
    with pytest.raises(SettingsError, match="database_url"):
        load_settings(ShopSettings, "SHOP", {})


def test_wrong_type_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="retries"):
        load_settings(ShopSettings, "SHOP", {"SHOP_DATABASE_URL": "postgresql://x", "SHOP_RETRIES": "many"})


def test_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SHOP_API_KEY_FILE"):
        load_settings(
            ShopSettings, "SHOP", {"SHOP_DATABASE_URL": "postgresql://x", "SHOP_API_KEY_FILE": str(tmp_path / "nope")}
        )
