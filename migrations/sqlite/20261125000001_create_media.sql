-- One row per media object; see migrations/postgres for the meaning of each column.
-- SQLite keeps instants as Unix epoch milliseconds (UTC) so they compare and index exactly.
CREATE TABLE IF NOT EXISTS media (
    id           TEXT    PRIMARY KEY NOT NULL,
    owner        TEXT    NOT NULL,
    extension    TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    size_bytes   INTEGER,
    sha256       TEXT,
    status       TEXT    NOT NULL CHECK (status IN ('uploading', 'ready')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS media_expires_at_idx ON media (expires_at);
CREATE INDEX IF NOT EXISTS media_uploading_created_at_idx ON media (created_at)
    WHERE status = 'uploading';
