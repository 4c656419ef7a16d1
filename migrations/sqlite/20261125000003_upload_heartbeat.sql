-- See migrations/postgres: the heartbeat of a live upload (Unix epoch milliseconds).
ALTER TABLE media ADD COLUMN heartbeat_at INTEGER;
