"""Template values in shell commands, quoted for where they stand.

A service's `command` runs as `sh -c COMMAND`, and its templates are filled with values
a ZApp author does not choose: the user's and the execution's names above all. Pasted
raw, an execution named `x; rm -rf ~` would run its second half. So each value is quoted
for the place of its variable in the command, which a small lexer of POSIX shell quoting
finds from the text before it:

- outside quotes: `shlex.quote(value)`, one word whatever the value holds;
- inside '...': the value with every `'` written `'"'"'`;
- inside "...": the value with `\\`, `$`, `` ` `` and `"` escaped by a backslash.

A variable anywhere else is refused, since what its quoting would be depends on more
shell than this lexer reads: inside `$(...)`, `` `...` ``, `${...}`, `$((...))`,
`((...))` or `$'...'`, in a `#` comment, right after a `$` or a backslash (`${x}` with
`x` = `(id)` would be a substitution), or after a here-document (`<<`). The values of
`{user_name}`, `{execution_id}` and `{deployment_name}` are also in the environment
(`$ZOE_USER`, `$EXECUTION_ID`, `$DEPLOY_NAME`): a command can use those instead.
Quoting holds for one reading: a command that hands a value on to be read again
(`eval`, `sh -c`, `ssh`) must take it from the environment.

Instance names (`{dns_name#...}`) are letters, digits and `-`, the description's own:
they are inserted as they are, wherever they stand.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping

from common.zapp import templates

RAW = "raw"  # an instance name: letters, digits and '-', the same in every quoting
UNQUOTED = "unquoted"
SINGLE = "single"
DOUBLE = "double"
_OTHER = "other"  # a context a value cannot be quoted for

REFUSED_MESSAGE = (
    "a template variable inside $(...), `...`, ${...}, $((...)), ((...)), $'...', a #"
    " comment, after a backslash or after a here-document (<<) cannot be quoted safely;"
    " put it outside them, or use the environment variable Zoe sets ($ZOE_USER,"
    " $EXECUTION_ID, $DEPLOY_NAME)"
)
_WORD_BREAK = frozenset(" \t\n;&|()<>")


class UnquotableVariable(ValueError):
    """A template variable stands where its value could not be quoted."""


class _Lexer:
    """Follows the quoting state of a shell command read in pieces, left to right.

    The state is a stack: the command's top level, then each quote or substitution
    opened and not yet closed. Only the top level and a quote opened right on it are
    contexts a value can be quoted for.
    """

    def __init__(self) -> None:
        self._stack: list[str] = [UNQUOTED]
        self._parens: list[int] = []  # open "(" inside each $(...) on the stack
        self._escape = False
        self._comment = False
        self._after_heredoc = False
        self._word_start = True
        self._dollar = False  # the last character read is an unescaped `$`

    def context(self) -> str:
        """Where a value inserted now would stand."""
        if self._escape or self._dollar or self._comment or self._after_heredoc:
            return _OTHER
        if len(self._stack) == 1:
            return UNQUOTED
        if len(self._stack) == 2 and self._stack[1] in (SINGLE, DOUBLE):
            return self._stack[1]
        return _OTHER

    def value(self) -> None:
        """A quoted value was inserted: it is part of a word, and closes no quote."""
        self._word_start = False
        self._dollar = False

    def feed(self, text: str) -> None:
        """Read literal command text."""
        i = 0
        while i < len(text):
            top = self._stack[-1]
            dollar = text[i] == "$" and not self._escape and top not in (SINGLE, "ansi")
            i = self._char(text, i)
            self._dollar = dollar

    def _char(self, text: str, i: int) -> int:
        char = text[i]
        top = self._stack[-1]
        if self._comment:
            self._comment = char != "\n"
            self._word_start = True
            return i + 1
        if self._escape:
            self._escape = False
            self._word_start = False
            return i + 1
        if top == SINGLE:
            if char == "'":
                self._stack.pop()
            return i + 1
        if char == "\\":
            self._escape = True
            return i + 1
        if top == "ansi":  # $'...': backslash escapes, ended by a quote
            if char == "'":
                self._stack.pop()
            return i + 1
        if top == "backtick":
            if char == "`":
                self._stack.pop()
            return i + 1
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if char == "$" and nxt == "'" and top != DOUBLE:
            self._stack.append("ansi")
            self._word_start = False
            return i + 2
        if char == "$" and nxt in ("(", "{"):
            self._stack.append("subst" if nxt == "(" else "param")
            self._parens.append(0)
            self._word_start = False
            return i + 2
        if char == "`":
            self._stack.append("backtick")
            return i + 1
        if top == DOUBLE:
            if char == '"':
                self._stack.pop()
            return i + 1
        if top == "param":
            if char == "}":
                self._stack.pop()
                self._parens.pop()
            elif char in "'\"":
                self._stack.append(SINGLE if char == "'" else DOUBLE)
            return i + 1
        return self._unquoted(char, nxt, i)

    def _unquoted(self, char: str, nxt: str, i: int) -> int:
        """`char` at the top level or inside $(...), where words and quotes begin."""
        if char == "#" and self._word_start:
            self._comment = True
            return i + 1
        if char == "<" and nxt == "<":
            self._after_heredoc = True
            return i + 2
        if char == "(" and nxt == "(" and self._word_start:  # bash's ((...)) arithmetic
            self._stack.append("subst")
            self._parens.append(1)
            return i + 2
        if char == "'":
            self._stack.append(SINGLE)
        elif char == '"':
            self._stack.append(DOUBLE)
        elif self._stack[-1] == "subst" and char in "()":
            if char == "(":
                self._parens[-1] += 1
            elif self._parens[-1] == 0:
                self._stack.pop()
                self._parens.pop()
            else:
                self._parens[-1] -= 1
        self._word_start = char in _WORD_BREAK
        return i + 1


def quote(value: str, context: str) -> str:
    """`value` written so that the shell reads it back as it is, in `context`."""
    if context == RAW:
        return value
    if context == UNQUOTED:
        return shlex.quote(value)
    if context == SINGLE:
        return value.replace("'", "'\"'\"'")
    if context == DOUBLE:
        return "".join("\\" + c if c in '\\$`"' else c for c in value)
    raise UnquotableVariable(REFUSED_MESSAGE)


def contexts(pieces: Iterable[tuple[bool, str]]) -> list[str]:
    """The context of each variable of a command split by `templates.parts`, in order;
    `RAW` for an instance name (`{dns_name#...}`), which may stand anywhere.

    Raises `UnquotableVariable` for a variable no quoting is safe for.
    """
    lexer = _Lexer()
    found: list[str] = []
    literal: list[str] = []
    for is_variable, text in pieces:
        if not is_variable:
            literal.append(text)  # `{{` comes as a piece of its own: read `${{` whole
            continue
        lexer.feed("".join(literal))
        literal = []
        if text.startswith(templates.DNS_PREFIX):
            found.append(RAW)
            lexer.value()
            continue
        context = lexer.context()
        if context == _OTHER:
            raise UnquotableVariable(REFUSED_MESSAGE)
        found.append(context)
        lexer.value()
    return found


def split_command(text: str, values: Mapping[str, str], hole: str) -> list[str]:
    """`templates.split_on` for a command: every value quoted for where it stands.

    The result is `value.join(chunks)` for the variable `hole`, an instance name.
    Raises `templates.TemplateSyntaxError`, `templates.UnknownVariable` and
    `UnquotableVariable`.
    """
    pieces = templates.parts(text)
    found = iter(contexts(pieces))
    chunks: list[str] = []
    current: list[str] = []
    for is_variable, piece in pieces:
        if not is_variable:
            current.append(piece)
            continue
        context = next(found)
        if piece == hole:
            chunks.append("".join(current))
            current = []
        elif piece in values:
            current.append(quote(values[piece], context))
        else:
            raise templates.UnknownVariable(piece)
    chunks.append("".join(current))
    return chunks
