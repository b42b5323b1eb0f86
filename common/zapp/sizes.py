"""How many bytes a description takes once expanded, counted without expanding it.

Expansion multiplies a description: each instance gets a spec of its own, with every
template filled, stored in its row and sent in its start command. The size of a spec is
the length of its JSON encoding (msgspec, UTF-8: what the bus carries). It is counted for
the last instance of each service, the largest (the longest name and index, and elastic
if any instance is), as the encoding of that spec with every template left empty plus
the encoded length of each template filled. JSON escapes each character on its own, so
a filled template's encoding is the sum of its literal text's and its values'.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import msgspec

from common.errors import FieldError
from common.zapp import shell, specs, templates
from common.zapp.limits import (
    MAX_DEPLOYMENT,
    MAX_EXECUTION_NAME,
    MAX_EXPANDED_BYTES,
    MAX_INSTANCE_BYTES,
    MAX_USER_NAME,
)
from common.zapp.model import Description, Service

# The names that take the most bytes: an execution name is printable text, and no
# printable character takes more than 4 bytes in JSON (`😀`; only control characters take
# 6); user and deployment names name Docker volumes and containers, so they are ASCII
# letters, digits, '_', '.' and '-', one byte each. `expand` checks the real names again
# (in a command, a value is quoted: a name of 128 `'` would take 7 bytes a character).
LONGEST = specs.Names(
    execution_id=2**63 - 1,
    execution_name="\U0001f600" * MAX_EXECUTION_NAME,
    user_name="u" * MAX_USER_NAME,
    deployment="d" * MAX_DEPLOYMENT,
)


def size_errors(description: Description, names: specs.Names) -> list[FieldError]:
    """The services whose instances, or the execution whose instances in all, are larger
    than the limits once expanded with `names`."""
    values = specs.template_values(description, names)
    errors: list[FieldError] = []
    total = 0
    for position, service in enumerate(description.services):
        largest = instance_bytes(service, values, names)
        total += largest * service.total_count
        if largest > MAX_INSTANCE_BYTES:
            errors.append(
                FieldError(
                    f"services[{position}]",
                    f"expanded, one instance takes up to {largest} bytes;"
                    f" at most {MAX_INSTANCE_BYTES} (256 KiB) are allowed",
                )
            )
    if total > MAX_EXPANDED_BYTES:
        errors.append(
            FieldError(
                "services",
                f"expanded, the {description.instance_count()} instances take up to {total}"
                f" bytes; at most {MAX_EXPANDED_BYTES} (8 MiB) are allowed",
            )
        )
    return errors


def instance_bytes(service: Service, values: Mapping[str, str], names: specs.Names) -> int:
    """Bytes of the JSON encoding of the spec of the last instance of `service`, the largest.

    `values` are those of `specs.template_values`. A template that does not parse, or a
    variable without a value, counts for nothing: expansion refuses them anyway.
    """
    index = service.total_count - 1
    instance = f"{service.name}{index}"
    environment = {variable: "" for variable, _ in service.environment}
    environment.update(specs.injected(names, instance))
    skeleton = specs.instance_spec(
        service,
        index,
        command=None if service.command is None else "",
        environment=environment,
        user_name=names.user_name,
    )
    size = len(msgspec.json.encode(skeleton))
    lengths = {specs.SELF: _encoded(instance)}
    for _, text in service.environment:
        size += _template_bytes(text, values, lengths)
    if service.command is not None:
        size += _command_bytes(service.command, values, lengths)
    return size


def _template_bytes(text: str, values: Mapping[str, str], lengths: dict[str, int]) -> int:
    """Bytes of `text` filled with `values`, in JSON; `lengths` caches each value's."""
    try:
        pieces = templates.parts(text)
    except templates.TemplateSyntaxError:
        return 0
    size = _encoded("".join(piece for is_variable, piece in pieces if not is_variable))
    used = Counter(piece for is_variable, piece in pieces if is_variable)
    for variable, count in used.items():
        if variable not in lengths:
            value = values.get(variable)
            lengths[variable] = 0 if value is None else _encoded(value)
        size += count * lengths[variable]
    return size


def _command_bytes(text: str, values: Mapping[str, str], lengths: dict[str, int]) -> int:
    """`_template_bytes` of a command, whose values are quoted for where they stand
    (`shell`); a command `expand` refuses counts its literal text only."""
    try:
        pieces = templates.parts(text)
        found = shell.contexts(pieces)
    except (templates.TemplateSyntaxError, shell.UnquotableVariable):
        return 0
    size = _encoded("".join(piece for is_variable, piece in pieces if not is_variable))
    variables = [piece for is_variable, piece in pieces if is_variable]
    quoted: dict[tuple[str, str], int] = {}
    for variable, context in zip(variables, found, strict=True):
        if variable == specs.SELF:  # an instance name: the same in every quoting
            size += lengths[specs.SELF]
            continue
        if (variable, context) not in quoted:
            value = values.get(variable)
            quoted[variable, context] = (
                0 if value is None else _encoded(shell.quote(value, context))
            )
        size += quoted[variable, context]
    return size


def _encoded(text: str) -> int:
    """Bytes of `text` inside a JSON string, without the quotes."""
    return len(msgspec.json.encode(text)) - 2
