"""The bounds of services/api/limits.py, without I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidRequest, InvalidZApp
from common.zapp import load_description
from services.api import limits
from services.api.actions import _Loaded, digest
from tests.unit.test_zapp_validate import changed, minimal, spark


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("0", 0),
        ("42", 42),
        (str(limits.MAX_ID), limits.MAX_ID),
        (str(limits.MAX_ID + 1), None),
        ("9" * 40, None),
        ("\u00b2", None),
        ("\u0661", None),
        ("1\u0660", None),
        ("+1", None),
        (" 1", None),
        ("1_0", None),
        ("-1", None),
        ("", None),
    ],
)
def test_ascii_int(raw: str, value: int | None) -> None:
    assert limits.ascii_int(raw) == value


def test_ascii_int_maximum() -> None:
    assert limits.ascii_int("10", 10) == 10
    assert limits.ascii_int("11", 10) is None


def _refusal(text: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        limits.loads(text)
    return caught.value


def test_depth() -> None:
    ok = "[" * limits.MAX_JSON_DEPTH + "]" * limits.MAX_JSON_DEPTH
    assert limits.loads(ok) is not None
    deeper = "[" * (limits.MAX_JSON_DEPTH + 1) + "]" * (limits.MAX_JSON_DEPTH + 1)
    assert "nested too deep" in _refusal(deeper).message
    assert "nested too deep" in _refusal("[" * 100_000 + "]" * 100_000).message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"a": "x\\u0000"}', "a"),
        ('{"a": [1, "\\ud800"]}', "a[1]"),
        ('{"a\\u0000": 1}', "a\\x00"),
        ('"\\udfff"', ""),
    ],
)
def test_unstorable_text(text: str, path: str) -> None:
    assert [e.path for e in _refusal(text).errors] == [path]


def test_surrogate_pairs_are_text() -> None:
    assert limits.loads('["\\ud83d\\ude00"]') == ["\U0001f600"]


@pytest.mark.parametrize("number", ["1" * 4301, "1" * 21, "-" + "1" * 21, "1e400", "NaN"])
def test_numbers(number: str) -> None:
    assert _refusal(f'{{"n": {number}}}').message == "request body is not valid JSON"


def test_decode_text() -> None:
    assert limits.decode_text(b"{}", None) == "{}"
    assert limits.decode_text("é".encode("latin-1"), "latin-1") == "é"
    for charset in ("nope", "base64", "rot13"):
        with pytest.raises(InvalidRequest, match="unsupported charset"):
            limits.decode_text(b"{}", charset)
    with pytest.raises(InvalidRequest, match="not valid text"):
        limits.decode_text(b"\xff", "utf-8")


def test_slots() -> None:
    slots = limits.Slots(1, "things")
    with slots.hold():
        with pytest.raises(limits.TooBusy) as caught, slots.hold():
            pass
        assert caught.value.status == 429
    with slots.hold():
        assert slots.held == 1
    assert slots.held == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**18), 10**18) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=15,
)


@given(JSON)
def test_what_loads_accepts_postgres_stores(value: Any) -> None:
    text = json.dumps(value)
    try:
        parsed = limits.loads(text)
    except InvalidRequest:
        assert "\x00" in text or "\\u0000" in text or "\\ud" in text
        return
    assert parsed == value
    json.dumps(parsed).encode()  # no lone surrogate left


@given(st.dictionaries(st.sampled_from(["name", "application", "zapp"]), JSON))
def test_digest_ignores_key_order_and_default_priority(body: dict[str, Any]) -> None:
    reordered = dict(reversed(list(body.items())))
    assert digest(body) == digest({**reordered, "priority": 0})
    assert digest(body) != digest({**body, "priority": 1})


def _outcome(parse: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", parse(text)
    except InvalidRequest as exc:
        return "refused", (exc.message, [(e.path, e.message) for e in exc.errors])


WILD = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**25), 10**25)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@given(WILD, st.sampled_from(["", " ", "x", "]", ",", "\ufeff"]), st.booleans())
def test_the_fast_parser_answers_as_the_standard_one(value: Any, junk: str, before: bool) -> None:
    """What `loads` accepts or refuses, and with which words, is what the standard
    library's parser and its hooks say: for any JSON (long integers, infinite numbers,
    NaN, lone surrogates, NUL) and for text around it that makes it no JSON."""
    for ascii_only in (True, False):  # escaped, or as they are (a lone surrogate too)
        text = json.dumps(value, ensure_ascii=ascii_only)
        for candidate in (text, junk + text if before else text + junk):
            got = _outcome(limits.loads, candidate)
            assert got == _outcome(limits.loads_slowly, candidate)


@pytest.mark.parametrize(
    "text",
    [
        "[" * limits.MAX_JSON_DEPTH + "]" * limits.MAX_JSON_DEPTH,
        "[" * (limits.MAX_JSON_DEPTH + 1) + "]" * (limits.MAX_JSON_DEPTH + 1),
        "[" * 100_000 + "]" * 100_000,
        '{"a": "x\\u0000"}',
        '"\\ud800"',
        '"\ud800"',  # as it is, not escaped: what a UTF-7 body decodes to
        '["\udfff", 1]',
        '"a\nb"',
        "1" * 4301,
        str(10**20),
        str(10**20 - 1),
        str(-(10**20) + 1),
        "1e400",
        "-Infinity",
        '{"a": 1, "a": 2}',
        "",
    ],
)
def test_the_fast_parser_answers_as_the_standard_one_at_the_edges(text: str) -> None:
    assert _outcome(limits.loads, text) == _outcome(limits.loads_slowly, text)


def test_the_api_checks_an_application_it_saw_once_and_a_changed_one_anew() -> None:
    loaded = _Loaded()
    first = loaded.load(spark())
    assert loaded.load(spark()) is first  # the same text: not checked again
    assert first == load_description(spark())
    broken = changed(spark(), ("services", 0, "total_count"), 0)
    with pytest.raises(InvalidZApp) as info:
        loaded.load(broken)
    assert info.value.errors == load_description_errors(broken)
    with pytest.raises(InvalidZApp):
        loaded.load(broken)  # a refused one is never kept
    for n in range(_Loaded.ENTRIES):  # the least recently used goes when it is full
        loaded.load(changed(minimal(), ("name",), f"app{n}"))
    again = loaded.load(spark())
    assert again is not first and again == first
    large = changed(spark(), ("services", 0, "command"), "x" * (_Loaded.LARGEST + 1))
    assert loaded.load(large) is not loaded.load(large)  # a large one is not kept


def load_description_errors(data: object) -> list[Any]:
    with pytest.raises(InvalidZApp) as info:
        load_description(data)
    return list(info.value.errors)
