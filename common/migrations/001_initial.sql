-- Executions, their service instances, nodes, the outbox and archived logs.

CREATE TABLE executions (
    id            bigserial PRIMARY KEY,
    name          text        NOT NULL,
    user_name     text        NOT NULL DEFAULT 'admin',
    state         text        NOT NULL DEFAULT 'submitted',
    -- set when cleaning up starts: the state the execution ends in
    outcome       text,
    description   jsonb       NOT NULL,
    will_end      boolean     NOT NULL,
    size          double precision NOT NULL DEFAULT 0,
    priority      integer     NOT NULL DEFAULT 0,
    error         text,
    exit_code     integer,
    submitted_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (state IN ('submitted', 'queued', 'starting', 'running', 'cleaning_up',
                     'finished', 'failed', 'terminated', 'error'))
);
CREATE INDEX executions_active ON executions (id)
    WHERE state IN ('submitted', 'queued', 'starting', 'running', 'cleaning_up');

CREATE TABLE instances (
    id             bigserial PRIMARY KEY,
    execution_id   bigint   NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    name           text     NOT NULL,
    service        text     NOT NULL,
    idx            integer  NOT NULL,
    essential      boolean  NOT NULL,
    monitor        boolean  NOT NULL,
    startup_order  integer  NOT NULL DEFAULT 0,
    cores          double precision NOT NULL,
    memory         bigint   NOT NULL,
    labels         text[]   NOT NULL DEFAULT '{}',
    -- the expanded InstanceSpec: image, command, environment, limits, ports, volumes
    spec           jsonb    NOT NULL,
    state          text     NOT NULL DEFAULT 'created',
    node           text,
    container_name text,
    container_id   text,
    endpoints      jsonb    NOT NULL DEFAULT '{}',
    exit_code      integer,
    reason         text,
    restart_count  integer  NOT NULL DEFAULT 0,
    not_before     timestamptz,
    removed        boolean  NOT NULL DEFAULT true,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (execution_id, name),
    CHECK (state IN ('created', 'placed', 'starting', 'running', 'stopping', 'stopped', 'died'))
);
CREATE INDEX instances_by_node ON instances (node) WHERE state IN ('placed', 'starting', 'running', 'stopping');
CREATE INDEX instances_by_execution ON instances (execution_id);

CREATE TABLE nodes (
    name            text PRIMARY KEY,
    cores           double precision NOT NULL,
    memory          bigint  NOT NULL,
    labels          text[]  NOT NULL DEFAULT '{}',
    images          text[]  NOT NULL DEFAULT '{}',
    state           text    NOT NULL DEFAULT 'up',
    registered_at   timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    usage           jsonb   NOT NULL DEFAULT '[]',
    CHECK (state IN ('up', 'lost'))
);

-- Transactional outbox: a row written in the same transaction as the state change it
-- announces; a relay publishes it (with confirms) and deletes it.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    exchange    text  NOT NULL,
    routing_key text  NOT NULL,
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The log a container printed, kept after the container is removed.
CREATE TABLE instance_logs (
    instance_id  bigint PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    log          text NOT NULL,
    saved_at     timestamptz NOT NULL DEFAULT now()
);
