-- The reaper's lease; see migrations/postgres. Instants are Unix epoch milliseconds.
ALTER TABLE media ADD COLUMN reap_claim TEXT;
ALTER TABLE media ADD COLUMN reap_claimed_until INTEGER;
