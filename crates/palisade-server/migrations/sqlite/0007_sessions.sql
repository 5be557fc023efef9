-- Web console sign-in sessions. The session id is a random 256-bit secret
-- held only by the browser (HttpOnly cookie); the store keeps its SHA-256.
-- `public_id` names the session in the admin audit log. The role is not
-- copied: it is read from the admin token at every request, so revoking the
-- token ends its sessions.
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,
    public_id  TEXT NOT NULL UNIQUE,
    token_id   TEXT NOT NULL REFERENCES admin_tokens (id),
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
