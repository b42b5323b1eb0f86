-- What an idempotent submission asked for (a hash of its normalised body), so that a
-- request reusing the key of another with a different body is refused (409) instead of
-- being answered with the other's execution. Null on rows stored before: those match any.
ALTER TABLE executions ADD COLUMN request_digest text;
