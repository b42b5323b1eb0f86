-- The process that wrote an outbox row (its notification channel). Its own relay
-- publishes the row from memory once the commit is notified, then deletes it; the
-- relays of other processes take such a row only once it is older than a grace
-- (common/outbox.py, PEER_GRACE): its writer died, or lost its wake-up. NULL: a row
-- from before, anyone's at once.
ALTER TABLE outbox ADD COLUMN writer text;
