-- State changes go out as ExecutionStatesChanged (routing key state.executions), the
-- changes of one transaction together. Rows of the former per-execution events
-- (state.execution.<id>) left in the outbox would wait for a relay that no longer
-- takes them: events are not replayed, so they go.
DELETE FROM outbox WHERE exchange = 'zoe.events' AND routing_key LIKE 'state.execution.%';
