-- An idempotency key per submission request (HTTP Idempotency-Key header or the AMQP
-- message id): a request delivered twice creates one execution.
ALTER TABLE executions ADD COLUMN request_id text;
CREATE UNIQUE INDEX executions_request_id ON executions (request_id) WHERE request_id IS NOT NULL;
