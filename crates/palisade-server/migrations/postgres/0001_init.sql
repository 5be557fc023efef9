-- Palisade control plane, PostgreSQL schema v1. Times are Unix milliseconds.
CREATE TABLE devices (
    id                     TEXT PRIMARY KEY,
    cert_fingerprint       TEXT NOT NULL,
    cert_serial            TEXT NOT NULL,
    hostname               TEXT NOT NULL,
    os                     TEXT NOT NULL,
    hardware_id            TEXT NOT NULL,
    agent_version          TEXT NOT NULL,
    owner_email            TEXT,
    enrolled_at            BIGINT NOT NULL,
    last_seen              BIGINT,
    revoked_at             BIGINT,
    revoked_reason         TEXT,
    applied_policy_version BIGINT,
    applied_at             BIGINT
);
-- At most one live device per hardware identity.
CREATE UNIQUE INDEX devices_live_hardware_id ON devices (hardware_id) WHERE revoked_at IS NULL;

CREATE TABLE enrollment_tokens (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    max_uses   BIGINT NOT NULL,
    uses       BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    note       TEXT
);

CREATE TABLE admin_tokens (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE policies (
    version    BIGINT PRIMARY KEY,
    document   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    author     TEXT NOT NULL
);

CREATE TABLE events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id          UUID PRIMARY KEY,
    device_id   TEXT NOT NULL,
    time        BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    provider    TEXT,
    model       TEXT,
    app         TEXT,
    decision    TEXT,
    json        TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_device_time ON events (device_id, time);

CREATE TABLE inventory (
    device_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    details    TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    PRIMARY KEY (device_id, kind, item_id)
);
