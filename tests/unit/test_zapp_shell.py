"""Template values in commands are quoted for where they stand: whatever an execution or
user is named, the command runs the words its author wrote, with the name as data.

The property tests run the expanded command with the real shells of the images: dash
(Debian's /bin/sh) and busybox's ash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.errors import InvalidZApp
from common.zapp import expand, load_description, shell, templates
from tests.unit.test_zapp_validate import errors, minimal

SHELLS = [
    pytest.param(["/bin/sh", "-c"], id="dash"),
    pytest.param(
        ["busybox", "sh", "-c"],
        id="busybox",
        marks=pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static"),
    ),
]
PAYLOADS = [
    "x; touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "'; touch pwned; '",
    '"; touch pwned; "',
    "\ntouch pwned\n",
    "a\\",
    "\\'",
    "${IFS}touch${IFS}pwned",
    "*",
    "~",
    "-n",
    "",
    'it\'s "quoted" $HOME `id` \\n',
]
# Names as an API may accept them: any text without NUL (which no argv can carry).
hostile = st.sampled_from(PAYLOADS) | st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24
)
literal = st.text(alphabet="abc-_.=/:@%+, ", max_size=4)
bare = st.text(alphabet="abc-_.=/:@%+,", min_size=1, max_size=4)
# One shell word: a run of parts, each a variable where a command can put it.
part = st.one_of(
    bare.map(lambda t: (t, t)),
    st.just(("{execution_name}", None)),
    literal.map(lambda t: (f"'{t}{{execution_name}}{t}'", t)),
    literal.map(lambda t: (f'"{t}{{execution_name}}{t}"', t)),
)
words = st.lists(st.lists(part, min_size=1, max_size=4), min_size=1, max_size=3)


def expanded_command(command: str, execution_name: str, user_name: str = "alice") -> str:
    description = load_description(minimal(command=command)).description
    [spec] = expand(
        description,
        execution_id=1,
        execution_name=execution_name,
        user_name=user_name,
        deployment="zoe",
    )
    assert spec.command is not None
    return spec.command


def run(argv: list[str], command: str) -> tuple[str, list[str]]:
    """What `command` prints, and what it left in an empty folder it ran in."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            [*argv, command],
            cwd=folder,
            env={"PATH": os.environ["PATH"], "HOME": folder},
            capture_output=True,
            check=True,
            timeout=20,
        ).stdout.decode("utf-8", "surrogateescape")
        return out, sorted(p.name for p in Path(folder).iterdir())


def build(word_parts: list[list[tuple[str, str | None]]], value: str) -> tuple[str, list[str]]:
    """A printf of the words, and the arguments it must receive with `value` filled in."""
    command, expected = [], []
    for word in word_parts:
        text = ""
        command.append("".join(template for template, _ in word))
        for template, around in word:
            if around is None:
                text += value
            elif template.startswith(("'", '"')):
                text += around + value + around
            else:
                text += around
        expected.append(text)
    return "printf '[%s]' " + " ".join(command), expected


@pytest.mark.parametrize("argv", SHELLS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(word_parts=words, value=hostile)
@example(word_parts=[[("{execution_name}", None)]], value="x; touch pwned")
@example(word_parts=[[('"{execution_name}"', "")]], value="$(touch pwned)")
@example(word_parts=[[("'{execution_name}'", "")]], value="'; touch pwned; '")
def test_a_hostile_execution_name_stays_one_argument(
    argv: list[str], word_parts: list[list[tuple[str, str | None]]], value: str
) -> None:
    template, expected = build(word_parts, value)
    command = expanded_command(template, value)
    out, left = run(argv, command)
    assert left == []  # nothing ran but printf
    assert out == "".join(f"[{arg}]" for arg in expected)


@pytest.mark.parametrize("argv", SHELLS)
@settings(max_examples=60, deadline=None)
@given(value=hostile, user=hostile)
def test_names_in_an_assignment_reach_the_program_unchanged(
    argv: list[str], value: str, user: str
) -> None:
    template = """NAME={execution_name}; printf '[%s]' "$NAME" '{user_name}' "{user_name}" """
    out, left = run(argv, expanded_command(template, value, user))
    assert (out, left) == (f"[{value}][{user}][{user}]", [])


def test_quoting_per_context() -> None:
    def filled(command: str) -> str:
        return expanded_command(command, "it's $x")

    assert filled("echo {execution_name}") == """echo 'it'"'"'s $x'"""
    assert filled("echo '{execution_name}'") == """echo 'it'"'"'s $x'"""
    assert filled('echo "{execution_name}"') == 'echo "it\'s \\$x"'
    # a name of safe characters is left as it was: the library's commands do not change
    assert expanded_command("run --name {execution_name}", "nightly-7") == "run --name nightly-7"


def test_instance_names_are_inserted_anywhere() -> None:
    data = minimal(command="echo $(getent hosts {dns_name#main0}) {dns_name#self}")
    description = load_description(data).description
    [spec] = expand(description, execution_id=1, execution_name="e", user_name="u", deployment="d")
    assert spec.command == "echo $(getent hosts main0) main0"


REFUSED = [
    "echo $(ls {execution_name})",
    "echo `ls {user_name}`",
    "echo ${{X:-{execution_name}}}",
    "echo $(( {execution_id} + 1 ))",
    "(( {execution_id} ))",
    "echo $'{execution_name}'",
    "echo ${execution_name}",
    "echo \\{execution_name}",
    "true # {execution_name}",
    "cat <<EOF\n{execution_name}\nEOF",
    'echo "$(echo "{deployment_name}")"',
]


@pytest.mark.parametrize("command", REFUSED)
def test_a_variable_that_cannot_be_quoted_is_refused_with_its_path(command: str) -> None:
    assert errors(minimal(command=command)) == [("services[0].command", shell.REFUSED_MESSAGE)]


@pytest.mark.parametrize("command", REFUSED)
def test_expand_refuses_it_too(command: str) -> None:
    description = load_description(minimal()).description
    service = description.services[0]
    import msgspec

    odd = msgspec.structs.replace(
        description, services=[msgspec.structs.replace(service, command=command)]
    )
    with pytest.raises(InvalidZApp) as info:
        expand(odd, execution_id=1, execution_name="e", user_name="u", deployment="d")
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("services[0].command", shell.REFUSED_MESSAGE)
    ]


@pytest.mark.parametrize(
    "command",
    [
        "echo a#{execution_name} $$ {user_name}",
        "x=$(ls); echo {execution_name} `date` ${{HOME}}",
        'echo "$(date)" \'{execution_name}\' "${{HOME}}/{user_name}"',
        "case {execution_name} in *) echo ok;; esac",
    ],
)
def test_variables_after_closed_substitutions_are_quoted(command: str) -> None:
    load_description(minimal(command=command))
    places = shell.contexts(templates.parts(command))
    assert places and set(places) <= {shell.UNQUOTED, shell.SINGLE, shell.DOUBLE}
