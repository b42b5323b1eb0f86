"""deploy/provision.py's generated passwords: kept once made, never read as an option."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import provision
from deploy.provision import Secrets


def test_a_password_is_made_once_and_kept(tmp_path: Path) -> None:
    store = Secrets(tmp_path / "secrets")
    first = store.password("amqp-x")
    assert store.password("amqp-x") == first
    assert (tmp_path / "secrets" / "amqp-x.password").stat().st_mode & 0o777 == 0o600


def test_a_new_password_never_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rabbitmqctl add_user NAME -abc reads -abc as an option: "Password is not provided"
    drawn = iter(["-first", "-second", "third"])
    monkeypatch.setattr(provision.secrets, "token_urlsafe", lambda n: next(drawn))
    assert Secrets(tmp_path).password("amqp-y") == "third"


def test_a_kept_password_starting_with_a_dash_is_made_anew(tmp_path: Path) -> None:
    (tmp_path / "amqp-z.password").write_text("-kept\n")
    value = Secrets(tmp_path).password("amqp-z")
    assert not value.startswith("-")
    assert (tmp_path / "amqp-z.password").read_text().strip() == value


def test_generated_passwords_are_urlsafe_and_dashless_first() -> None:
    for _ in range(2000):
        value = provision.new_password()
        assert value[0] != "-"
        assert len(value) == 32
