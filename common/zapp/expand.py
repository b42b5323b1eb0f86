"""Expansion of a description into the instances of one execution, and endpoint URLs.

Every execution gets a Docker network of its own where each container has its instance
name as alias, so the DNS name of an instance is its instance name (`spark-master0`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from common.errors import FieldError, InvalidZApp
from common.zapp import shell, templates
from common.zapp.model import Description, Service
from common.zapp.sizes import size_errors
from common.zapp.specs import (
    DEFAULT_CORES,
    DEFAULT_MEMORY,
    SELF,
    InstanceSpec,
    Names,
    PortSpec,
    VolumeSpec,
    injected,
    instance_spec,
    template_values,
)

__all__ = [
    "DEFAULT_CORES",
    "DEFAULT_MEMORY",
    "InstanceSpec",
    "PortSpec",
    "VolumeSpec",
    "expand",
    "url_for",
]

_ERROR_MESSAGE = "invalid ZApp description"


def expand(
    description: Description,
    *,
    execution_id: int,
    execution_name: str,
    user_name: str,
    deployment: str,
) -> list[InstanceSpec]:
    """One `InstanceSpec` per instance, in service order then index.

    See `specs.instance_spec` for the resources. Every instance also gets `EXECUTION_ID`,
    `DEPLOY_NAME` (= `deployment`), `ZOE_USER`, `SERVICE_NAME` (= its instance name) and
    `ZOE_WORKSPACE`, which win over variables of the same name in the description.
    Template values in a command are quoted for where they stand (`shell`), so no name
    can break out of its word; a volume named `workspace` is `user_name`'s workspace.

    Raises `InvalidZApp`, before building anything, when the specs would be larger than
    the limits (`sizes`), which `load_description` already checked for names up to their
    longest allowed; and for a template that does not resolve, which only a description
    that did not come from `load_description` can have.
    """
    names = Names(
        execution_id=execution_id,
        execution_name=execution_name,
        user_name=user_name,
        deployment=deployment,
    )
    errors = size_errors(description, names)
    if errors:
        raise InvalidZApp(_ERROR_MESSAGE, errors=errors)
    values = template_values(description, names)
    specs: list[InstanceSpec] = []
    for position, service in enumerate(description.services):
        specs.extend(_instances(service, f"services[{position}]", values, names))
    return specs


def _instances(
    service: Service, path: str, values: dict[str, str], names: Names
) -> list[InstanceSpec]:
    # Templates are resolved once per service; only {dns_name#self} differs per instance.
    environment = [
        (variable, _prepare(value, values, f"{path}.environment[{i}][1]"))
        for i, (variable, value) in enumerate(service.environment)
    ]
    command = (
        None
        if service.command is None
        else _prepare(service.command, values, f"{path}.command", shell.split_command)
    )
    specs = []
    for index, name in enumerate(service.instance_names()):
        env = {variable: name.join(chunks) for variable, chunks in environment}
        env.update(injected(names, name))
        specs.append(
            instance_spec(
                service,
                index,
                command=None if command is None else name.join(command),
                environment=env,
                user_name=names.user_name,
            )
        )
    return specs


def _prepare(
    text: str,
    values: Mapping[str, str],
    path: str,
    split: Callable[[str, Mapping[str, str], str], list[str]] = templates.split_on,
) -> list[str]:
    try:
        return split(text, values, SELF)
    except templates.TemplateSyntaxError:
        message = templates.SYNTAX_MESSAGE
    except templates.UnknownVariable as exc:
        message = f"unknown template variable {{{exc.args[0]}}}"
    except shell.UnquotableVariable:
        message = shell.REFUSED_MESSAGE
    raise InvalidZApp(_ERROR_MESSAGE, errors=[FieldError(path, message)])


def url_for(port: PortSpec, host: str, host_port: int, proxy_path: str = "") -> str:
    """The URL of `port` published at `host:host_port`, filling `{ip_port}` and `{proxy_path}`.

    An IPv6 `host` is bracketed. A template that is not valid has its two variables
    replaced textually instead, so this never fails.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    values = {"ip_port": f"{host}:{host_port}", "proxy_path": proxy_path}
    try:
        return templates.substitute(port.url_template, values)
    except (templates.TemplateSyntaxError, templates.UnknownVariable):
        text = port.url_template
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        return text
