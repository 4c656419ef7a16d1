-- The reaper's lease: a replica stamps the rows it works on with its claim id and an
-- instant until which no other replica may take them. Rows are never locked across a call
-- to object storage; the lease is what keeps replicas apart.
ALTER TABLE media ADD COLUMN IF NOT EXISTS reap_claim uuid;
ALTER TABLE media ADD COLUMN IF NOT EXISTS reap_claimed_until timestamptz;
