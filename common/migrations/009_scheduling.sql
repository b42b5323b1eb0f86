-- Why a queued execution waits, as the scheduler last said it, and whether the cluster
-- as it is could ever hold it (false: no node, nor the whole cluster emptied, could);
-- null reason: it does not wait (or has not been looked at yet). The scheduler writes
-- them only when they change.
ALTER TABLE executions
    ADD COLUMN pending_reason text,
    ADD COLUMN schedulable    boolean NOT NULL DEFAULT true;

-- A drained node takes no new instances; its elastic instances move elsewhere, its
-- essential ones stay until their executions end or, past the deadline (if any), end as
-- if the node were lost. Only the scheduler writes these, on a drain request.
ALTER TABLE nodes
    ADD COLUMN drained_at     timestamptz,
    ADD COLUMN drain_deadline timestamptz;
