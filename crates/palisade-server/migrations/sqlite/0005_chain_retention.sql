-- Interaction-record hash chain and signed checkpoints (retention).
-- chain_pos is assigned by the ingest writer under the chain lock as head + 1,
-- so it is contiguous (seq is not: PostgreSQL burns identity values on
-- conflicts). Rows stored before this migration keep chain_pos NULL.
ALTER TABLE events ADD COLUMN chain_pos INTEGER;
ALTER TABLE events ADD COLUMN chain_prev TEXT;
ALTER TABLE events ADD COLUMN chain_hash TEXT;
-- SHA-256 of the record's content part (prompt, response text); kept when
-- retention purges the content so the chain stays verifiable.
ALTER TABLE events ADD COLUMN content_digest TEXT;
ALTER TABLE events ADD COLUMN content_purged_at INTEGER;
CREATE UNIQUE INDEX events_chain_pos ON events (chain_pos);
-- Content retention walks only rows whose content is still there.
CREATE INDEX events_content_live ON events (received_at) WHERE content_purged_at IS NULL;

-- The newest link of each chain kept outside the admin_audit table itself
-- (events: survives retention deleting every row).
CREATE TABLE chain_heads (
    chain    TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    hash     TEXT NOT NULL
);
INSERT INTO chain_heads (chain, position, hash)
VALUES ('events', 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Signed checkpoints: the hash at a position, HMAC'd with the audit key.
-- Written before retention deletes a chain's entries up to that position,
-- and at the head on each retention run.
CREATE TABLE chain_checkpoints (
    chain    TEXT NOT NULL,
    position INTEGER NOT NULL,
    hash     TEXT NOT NULL,
    time     INTEGER NOT NULL,
    hmac     TEXT NOT NULL,
    PRIMARY KEY (chain, position)
);
