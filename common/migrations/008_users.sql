-- Users, roles (sets of capabilities with default quotas), API tokens, and the runtime
-- limit each execution was submitted under.
--
-- Capabilities (services/api/auth.py names them):
--   submit        start executions (a guest may not)
--   see-status    read the cluster's nodes and the queue
--   operate-all   see, terminate, read logs and endpoints of anyone's executions
--   change-config manage users, roles, quotas and others' tokens
--   customise     override a shop ZApp's per-service resources
--   whole-shop    start any ZApp of the shop (else only those whose manifest allows the role)
--   run-as-root   start a ZApp whose description asks for root in its containers
-- A null quota means no limit.

CREATE TABLE roles (
    name            text PRIMARY KEY,
    capabilities    text[]           NOT NULL DEFAULT '{}',
    max_priority    integer          NOT NULL DEFAULT 0,
    -- fair-share weight of the role's users (a user's own weight overrides it)
    weight          double precision NOT NULL DEFAULT 1 CHECK (weight > 0),
    max_executions  integer          CHECK (max_executions >= 0),
    max_cores       double precision CHECK (max_cores >= 0),
    max_memory      bigint           CHECK (max_memory >= 0),
    max_runtime     double precision CHECK (max_runtime > 0)
);

INSERT INTO roles (name, capabilities, max_priority, max_executions, max_cores, max_memory,
                   max_runtime) VALUES
    ('admin', '{submit,see-status,operate-all,change-config,customise,whole-shop,run-as-root}',
     100, NULL, NULL, NULL, NULL),
    ('user', '{submit,see-status,customise,whole-shop}', 10, 10, 32, 137438953472, 604800),
    ('guest', '{}', 0, 0, 0, 0, NULL);

CREATE TABLE users (
    name            text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_.-]{0,62}$'),
    role            text        NOT NULL REFERENCES roles (name),
    -- argon2id, as argon2-cffi encodes it
    password_hash   text,
    enabled         boolean     NOT NULL DEFAULT true,
    weight          double precision CHECK (weight > 0),
    -- overrides of the role's quotas; null: the role's
    max_executions  integer          CHECK (max_executions >= 0),
    max_cores       double precision CHECK (max_cores >= 0),
    max_memory      bigint           CHECK (max_memory >= 0),
    max_runtime     double precision CHECK (max_runtime > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Every token is stored as the SHA-256 of its secret (the secret is random, so a slow
-- hash adds nothing); `kind` is 'api' (made by `zoe token create` or a platform) or
-- 'login' (made by signing in, expires).
CREATE TABLE tokens (
    id           bigserial   PRIMARY KEY,
    user_name    text        NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    digest       bytea       NOT NULL UNIQUE,
    kind         text        NOT NULL DEFAULT 'api' CHECK (kind IN ('api', 'login')),
    description  text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX tokens_by_user ON tokens (user_name);

-- The runtime limit in force when the execution was submitted (seconds; null: none):
-- the scheduler terminates an execution running longer, with reason 'runtime-limit'.
ALTER TABLE executions ADD COLUMN runtime_limit double precision;
CREATE INDEX executions_by_user ON executions (user_name)
    WHERE state IN ('submitted', 'queued', 'starting', 'running', 'cleaning_up');
