"""Where the CLI finds its token: ZOE_TOKEN, then ZOE_TOKEN_FILE, then `zoe login`'s file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.cli import config


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    for name in ("ZOE_TOKEN", "ZOE_TOKEN_FILE", "ZOE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_login_stores_the_token_only_its_owner_may_read() -> None:
    assert config.token() is None and config.url() == config.DEFAULT_URL
    path = config.store("http://zoe.example:8080", "zoe_abc")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config.token() == "zoe_abc" and config.url() == "http://zoe.example:8080"
    config.store("http://zoe.example:8080", None)  # signed out
    assert config.token() is None


def test_the_environment_overrides_the_stored_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.store(config.DEFAULT_URL, "zoe_stored")
    secret = tmp_path / "admin.token"
    secret.write_text("zoe_from_file\n")
    monkeypatch.setenv("ZOE_TOKEN_FILE", str(secret))
    assert config.token() == "zoe_from_file"
    monkeypatch.setenv("ZOE_TOKEN", "zoe_from_env")
    assert config.token() == "zoe_from_env"


def test_an_unreadable_token_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOE_TOKEN_FILE", str(tmp_path / "missing.token"))
    with pytest.raises(SystemExit, match=r"cannot read ZOE_TOKEN_FILE .*missing\.token"):
        config.token()


def test_a_broken_config_file_is_no_token() -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2")
    assert config.token() is None
