-- An account's media, newest first: the listing's keyset pages and an account's purge.
CREATE INDEX IF NOT EXISTS media_owner_created_at_idx ON media (owner, created_at DESC, id DESC);
