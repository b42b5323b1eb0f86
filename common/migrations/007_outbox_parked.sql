-- Outbox rows the broker refused for their own sake (too large, unroutable): kept here
-- with the reason instead of blocking the head of the outbox for everyone.
CREATE TABLE outbox_parked (
    id          bigint PRIMARY KEY,
    exchange    text  NOT NULL,
    routing_key text  NOT NULL,
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    error       text  NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
