"""The database URL of the admin connection keeps every host and the query."""

from common.db import admin_url


def test_admin_url_keeps_several_hosts_and_the_query() -> None:
    url = "postgresql://postgres@127.0.0.1:5433,127.0.0.1:5434/zoe?target_session_attrs=read-write"
    assert admin_url(url) == (
        "postgresql://postgres@127.0.0.1:5433,127.0.0.1:5434/postgres"
        "?target_session_attrs=read-write",
        "zoe",
    )


def test_admin_url_of_one_host_with_a_password() -> None:
    assert admin_url("postgresql://zoe:secret@db:5432/zoe") == (
        "postgresql://zoe:secret@db:5432/postgres",
        "zoe",
    )
    assert admin_url("postgresql://postgres@127.0.0.1:5432/")[1] == ""
