"""The request bodies and responses of the HTTP API as msgspec types.

They describe what the routes take and answer (services/api/openapi.py makes the
OpenAPI document from them). The handlers build plain dicts (services/api/store.py,
actions.py, shop.py): these types are held to them by the conformance test, which
checks every answer of the live api against the document.

Fields without a default are always present (``X | None``: present and maybe null);
fields with a default may be missing. No type forbids unknown fields in an answer, so a
field added to an answer does not break a client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from common.states import ExecutionState, InstanceState
from common.zapp import Description
from common.zapp.limits import MAX_EXECUTION_NAME
from common.zapp.manifest import Parameter

UserName = Annotated[str, Meta(pattern="^[a-z][a-z0-9_.-]{0,62}$")]
Priority = Annotated[int, Meta(ge=-100, le=100)]


class _In(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: an unknown field is a 400."""


class _Out(Struct, frozen=True, kw_only=True):
    """A response body."""


# ---- errors ----------------------------------------------------------------------------


class FieldProblem(_Out, frozen=True, kw_only=True):
    """One offending value: its JSON path (or query key) and what is wrong with it."""

    path: str
    message: str


class Error(_Out, frozen=True, kw_only=True):
    """Every 4xx and 5xx answer of a JSON route."""

    error: str
    errors: list[FieldProblem]


class QuotaError(Error, frozen=True, kw_only=True):
    """A submission over one of the caller's quotas (403): nothing was stored."""

    quota: Literal["executions", "cores", "memory", "runtime"]
    limit: float
    used: float
    requested: float


# ---- executions ------------------------------------------------------------------------


class Health(_Out, frozen=True, kw_only=True):
    """The API and its database answer."""

    status: Literal["ok"]


class SubmitRequest(_In, frozen=True, kw_only=True):
    """An execution of a ZApp: a whole description (``application``), or a ZApp of the
    shop (``zapp``) with its parameters and resource overrides. Exactly one of
    ``application`` and ``zapp``."""

    name: Annotated[str, Meta(min_length=1, max_length=MAX_EXECUTION_NAME)]
    application: dict[str, Any] | UnsetType = UNSET
    zapp: str | UnsetType = UNSET
    params: dict[str, Any] | UnsetType = UNSET
    resources: dict[str, Any] | UnsetType = UNSET
    priority: Priority = 0


class Usage(_Out, frozen=True, kw_only=True):
    """The latest sample of a container's CPU (percent of one core) and memory use."""

    cpu_percent: float
    memory_bytes: int
    sampled_at: datetime


class Instance(_Out, frozen=True, kw_only=True):
    """One service instance of an execution (one container when it runs)."""

    id: int
    name: str
    service: str
    essential: bool
    monitor: bool
    state: InstanceState
    node: str | None
    container_name: str | None
    container_id: str | None
    exit_code: int | None
    reason: str | None
    restart_count: int
    endpoints: dict[str, str]
    cores: float
    memory: int
    updated_at: datetime
    usage: Usage | None


class ExecutionSummary(_Out, frozen=True, kw_only=True):
    """An execution as lists show it."""

    id: int
    name: str
    user: str
    state: ExecutionState
    outcome: str | None
    error: str | None
    exit_code: int | None
    will_end: bool
    size: float
    priority: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    runtime_limit: float | None  # seconds it may run (its user's quota): null, no limit
    pending_reason: str | None  # why it waits to be placed, while it does
    schedulable: bool


class Execution(ExecutionSummary, frozen=True, kw_only=True):
    """An execution with its service instances."""

    services: list[Instance]


class Submitted(Execution, frozen=True, kw_only=True):
    """A stored submission, with the warnings of its description."""

    warnings: list[str]


class Termination(_Out, frozen=True, kw_only=True):
    """A termination was queued; the execution ends ``terminated`` once cleaned up."""

    id: int
    state: ExecutionState
    terminating: bool


Endpoints = dict[str, dict[str, str]]  # instance name -> port name -> URL


class Node(_Out, frozen=True, kw_only=True):
    """A node: its capacity, what is reserved on it, and its liveness."""

    name: str
    cores: float
    memory: int
    labels: list[str]
    state: Literal["up", "lost", "drained"]
    last_heartbeat: datetime
    drain_deadline: datetime | None  # when what still runs on a drained node is ended
    cores_reserved: float
    memory_reserved: int
    instances: int


class DrainRequest(_In, frozen=True, kw_only=True):
    """Drain a node; what still runs there after ``deadline`` seconds ends as on a lost
    node (none: it runs on)."""

    deadline: Annotated[float, Meta(ge=0, le=365 * 24 * 3600)] | None = None


class Drain(_Out, frozen=True, kw_only=True):
    """A drain (or undrain) request was queued for the scheduler."""

    name: str
    draining: bool
    deadline: float | None


# ---- the shop --------------------------------------------------------------------------


class ZAppSummary(_Out, frozen=True, kw_only=True):
    """A ZApp of the shop."""

    id: str
    category: str
    name: str
    will_end: bool
    parameters: list[Parameter]
    logo_url: str | None


class ZAppDetail(ZAppSummary, frozen=True, kw_only=True):
    """A ZApp with its README (Markdown), logo (base64 PNG) and description."""

    readme: str
    logo: str | None
    description: Description
    warnings: list[str]


class RenderRequest(Struct, frozen=True, kw_only=True):
    """Parameters and resource overrides for a ZApp of the shop (other fields are
    ignored)."""

    params: dict[str, Any] | UnsetType | None = UNSET
    resources: dict[str, Any] | UnsetType | None = UNSET


class Rendered(_Out, frozen=True, kw_only=True):
    """The description a ZApp of the shop gives with these parameters."""

    description: Description
    warnings: list[str]


class Validated(_Out, frozen=True, kw_only=True):
    """A valid ZApp description: its warnings and how many instances it makes."""

    valid: bool
    warnings: list[str]
    instances: int


# ---- users and sign-in -----------------------------------------------------------------

Password = Annotated[str, Meta(min_length=8, max_length=1024)]


class LoginRequest(_In, frozen=True, kw_only=True):
    """A user's name and password."""

    username: Annotated[str, Meta(min_length=1, max_length=63)]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class LoginReply(_Out, frozen=True, kw_only=True):
    """A login token for ``Authorization: Bearer``; the same sign-in is set as the
    session cookie (``zoe_session``) with its CSRF cookie (``zoe_csrf``)."""

    token: str
    user: str
    role: str
    expires_at: datetime


class Quota(_Out, frozen=True, kw_only=True):
    """Limits of one user (null: unlimited): concurrent executions, cores and memory
    reserved by their active executions, seconds an execution may run."""

    executions: int | None
    cores: float | None
    memory: int | None
    runtime: float | None


class QuotaUse(_Out, frozen=True, kw_only=True):
    """What a user's active executions hold."""

    executions: int
    cores: float
    memory: int


class User(_Out, frozen=True, kw_only=True):
    """A user: role, its capabilities and priority ceiling, fair-share weight, quota."""

    name: str
    role: str
    enabled: bool
    created_at: datetime
    weight: float
    capabilities: list[str]
    max_priority: int
    quota: Quota


class NewUser(User, frozen=True, kw_only=True):
    """A user just made; ``password`` only when it was generated (shown this once)."""

    password: str | UnsetType = UNSET


class Me(User, frozen=True, kw_only=True):
    """The caller, and what their active executions hold."""

    usage: QuotaUse


class TokenRequest(_In, frozen=True, kw_only=True):
    """A new API token; ``user`` (change-config only) makes it for another user."""

    description: Annotated[str, Meta(max_length=200)] = ""
    user: UserName | UnsetType = UNSET


class Token(_Out, frozen=True, kw_only=True):
    """A token (never its secret, except once when it is made)."""

    id: int
    user: str
    kind: Literal["api", "login"]
    description: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewToken(Token, frozen=True, kw_only=True):
    """A token just made: ``token`` is its secret, shown this once."""

    token: str


class UserRequest(_In, frozen=True, kw_only=True):
    """A new user of a role (``admin``, ``user``, ``guest``); without ``password`` one is
    generated and answered once."""

    name: UserName
    role: Annotated[str, Meta(min_length=1, max_length=63)]
    password: Password | UnsetType = UNSET


class UserPatch(_In, frozen=True, kw_only=True):
    """Changes to a user; each field left out (or a null weight) stays as it is;
    disabling a user revokes their tokens."""

    role: Annotated[str, Meta(min_length=1, max_length=63)] | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    password: Password | UnsetType = UNSET
    weight: Annotated[float, Meta(gt=0, le=1e6)] | UnsetType | None = UNSET


class QuotaRequest(_In, frozen=True, kw_only=True):
    """A user's quota; each null or left out: the role's default."""

    executions: Annotated[int, Meta(ge=0, lt=2**31)] | None = None  # an integer column
    cores: Annotated[float, Meta(ge=0, lt=2**62)] | None = None
    memory: Annotated[int, Meta(ge=0, lt=2**62)] | None = None
    runtime: Annotated[float, Meta(gt=0, lt=2**62)] | None = None


def json_schema_of(types: list[Any], ref: str) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """JSON Schemas of ``types`` with ``$ref``s to ``ref`` (``{name}`` in it), and the
    components they refer to."""
    return msgspec.json.schema_components(types, ref_template=ref)
