"""Templates in environment values, commands and port URLs.

The syntax is the subset of Python's `str.format` the original Zoe relied on: `{name}` is
a variable, `{{` and `}}` are literal braces, and a lone brace is an error. So a shell
`${HOME}` in a command must be written `${{HOME}}`, exactly as before.

Variables of a description: `{user_name}`, `{execution_id}`, `{execution_name}`,
`{deployment_name}`, `{proxy_base}` (the api proxy's path of the execution,
`/proxy/<execution_id>`: a web interface served under `{proxy_base}/{dns_name#self}/<port>`
works through the proxy), `{dns_name#self}` and `{dns_name#<instance>}`. Port URL templates
use `{ip_port}` and `{proxy_path}`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

DNS_PREFIX = "dns_name#"
SELF = "self"
SIMPLE_VARIABLES = frozenset(
    {"user_name", "execution_id", "execution_name", "deployment_name", "proxy_base"}
)
URL_VARIABLES = frozenset({"ip_port", "proxy_path"})

# Set by Zoe in every container; a description cannot override them.
WORKSPACE_PATH = "/mnt/workspace"
INJECTED_VARIABLES = ("EXECUTION_ID", "DEPLOY_NAME", "ZOE_USER", "SERVICE_NAME", "ZOE_WORKSPACE")

SYNTAX_MESSAGE = "unbalanced '{' or '}' (write '{{' or '}}' for a literal brace)"

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class TemplateSyntaxError(ValueError):
    """A lone `{` or `}` in a template."""


class UnknownVariable(KeyError):
    """A template uses a variable that has no value."""


def parts(text: str) -> tuple[tuple[bool, str], ...]:
    """Split `text` into `(is_variable, text)` pieces, braces unescaped.

    Memoised for texts of at most 1,024 characters (the last 1,024 of them: a few MiB
    at worst): the same few templates (a ZApp's commands, values and port URLs) are split
    again at every submission and every start."""
    return _parts_memo(text) if len(text) <= _MEMO_TEXT else _parts(text)


_MEMO_TEXT = 1024


def _parts(text: str) -> tuple[tuple[bool, str], ...]:
    pieces: list[tuple[bool, str]] = []
    position = 0
    for match in _TOKEN.finditer(text):
        if match.start() > position:
            pieces.append((False, text[position : match.start()]))
        token = match.group(0)
        if token == "{{":
            pieces.append((False, "{"))
        elif token == "}}":
            pieces.append((False, "}"))
        elif match.group(1) is not None:
            pieces.append((True, match.group(1)))
        else:
            raise TemplateSyntaxError(SYNTAX_MESSAGE)
        position = match.end()
    if position < len(text):
        pieces.append((False, text[position:]))
    return tuple(pieces)


_parts_memo = functools.lru_cache(maxsize=1024)(_parts)


def variables(text: str) -> list[str]:
    """The variable names `text` uses, in order, repeated as often as they occur."""
    return [piece for is_variable, piece in parts(text) if is_variable]


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with every variable replaced by its value; substituted values are not re-read."""
    out: list[str] = []
    for is_variable, piece in parts(text):
        if not is_variable:
            out.append(piece)
        elif piece in values:
            out.append(values[piece])
        else:
            raise UnknownVariable(piece)
    return "".join(out)


def split_on(text: str, values: Mapping[str, str], hole: str) -> list[str]:
    """`text` substituted except variable `hole`: the result is `value.join(chunks)`.

    Lets one template be parsed once and filled for many instances cheaply.
    """
    chunks: list[str] = []
    current: list[str] = []
    for is_variable, piece in parts(text):
        if not is_variable:
            current.append(piece)
        elif piece == hole:
            chunks.append("".join(current))
            current = []
        elif piece in values:
            current.append(values[piece])
        else:
            raise UnknownVariable(piece)
    chunks.append("".join(current))
    return chunks


def escape(text: str) -> str:
    """`text` as a template whose value is `text` itself."""
    return text.replace("{", "{{").replace("}", "}}")
