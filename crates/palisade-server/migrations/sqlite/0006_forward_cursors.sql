-- Live SIEM forwarding: one cursor per configured target (its `name`).
-- last_seq is the highest event seq whose frame the collector's TCP stack
-- acknowledged; the forwarder resumes after it.
CREATE TABLE forward_cursors (
    name       TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
