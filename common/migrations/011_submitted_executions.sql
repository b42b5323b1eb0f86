-- Executions stored by the api and not yet taken into the queue: few, looked for at
-- every pass.
CREATE INDEX executions_submitted ON executions (id) WHERE state = 'submitted';
