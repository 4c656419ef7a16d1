-- See migrations/postgres: an account's media, newest first.
CREATE INDEX IF NOT EXISTS media_owner_created_at_idx ON media (owner, created_at DESC, id DESC);
