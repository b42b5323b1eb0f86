"""The web pages' pure helpers: README rendering, the shell's embedded data, redirects."""

from __future__ import annotations

import json
import re

from services.api.pages import _json_for_html, _safe_next, render_markdown


def test_readme_renders_tables_code_and_emphasis() -> None:
    out = render_markdown(
        "# T\n\n**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```sh\nzoe ls\n```\n"
    )
    assert "<strong>bold</strong>" in out and "<code>code</code>" in out
    assert re.search(r"<table>.*<th>a</th>.*<td>2</td>", out, re.S)
    assert '<pre><code class="language-sh">zoe ls\n</code></pre>' in out
    assert "|" not in out and "**" not in out


def test_raw_html_in_a_readme_is_text() -> None:
    out = render_markdown('<script>alert(1)</script>\n\n<img src=x onerror="alert(1)">')
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;" in out


def test_embedded_data_cannot_close_its_script_element() -> None:
    value = {"readme_html": "</script><script>alert(1)</script>", "amp": "a & b"}
    text = _json_for_html(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


def test_after_sign_in_only_local_paths() -> None:
    assert _safe_next("/executions/3?x=1") == "/executions/3?x=1"
    for bad in ("https://evil.example/", "//evil.example/", "/\\evil.example", "", "javascript:x"):
        assert _safe_next(bad) == "/executions"
