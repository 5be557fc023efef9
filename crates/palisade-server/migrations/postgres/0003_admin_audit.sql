-- Admin audit log (hash-chained, HMAC-signed) and roles on admin tokens.
-- seq is assigned by the writer as head + 1 (never AUTOINCREMENT): the chain
-- is contiguous and the primary key refuses a fork (two entries, one seq).
ALTER TABLE admin_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';

CREATE TABLE admin_audit (
    seq         BIGINT PRIMARY KEY,
    time        BIGINT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    ip          TEXT,
    user_agent  TEXT,
    details     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    hmac        TEXT NOT NULL
);
CREATE INDEX admin_audit_time ON admin_audit (time);
