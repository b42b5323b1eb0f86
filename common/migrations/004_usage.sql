-- The latest CPU and memory use of each instance's container, as its executor sampled it
-- (heartbeats carry the samples; the monitor stores them every few seconds).
CREATE TABLE instance_usage (
    instance_id   bigint PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    cpu_percent   double precision NOT NULL,
    memory_bytes  bigint NOT NULL,
    sampled_at    timestamptz NOT NULL
);
