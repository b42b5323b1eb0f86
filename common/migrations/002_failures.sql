-- What failure handling needs: container generations, restart backoff, orphans.

-- An instance that goes back to the queue (restarted after a death, or an elastic
-- instance taken back to make room) gets a new container name the next time it is
-- placed: `generation` counts those returns and names the container (suffix -rN), so a
-- container name is started at most once. `backoff` is how long (seconds) the last
-- restart had to wait before it could be placed again.
ALTER TABLE instances
    ADD COLUMN generation integer NOT NULL DEFAULT 0,
    ADD COLUMN backoff double precision NOT NULL DEFAULT 0;

-- Containers left on a lost node: the monitor gives them up when it declares the node
-- lost (their instances died, or were counted as removed); the scheduler asks the
-- node's executor to remove them when the node comes back.
CREATE TABLE orphans (
    node           text   NOT NULL,
    container_name text   NOT NULL,
    execution_id   bigint NOT NULL,
    instance_id    bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, container_name)
);
