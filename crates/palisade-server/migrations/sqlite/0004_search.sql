-- Event search and usage (issue #6). Every listing is ordered by seq (newest
-- first, cursor = seq), so each equality filter gets an index whose order
-- within one value IS seq: in SQLite a plain index on (col) carries the rowid
-- (= seq) as its last key, so `col = ? ORDER BY seq DESC` walks it backwards
-- and stops after one page. Low-cardinality columns that usually match a
-- large share of rows (provider) get no index: walking seq and filtering
-- finds a page quickly. Indexes cost ingest time, so there is no index for
-- team or the token/cost columns (usage aggregates over a time range).
ALTER TABLE events ADD COLUMN os_user TEXT;
ALTER TABLE events ADD COLUMN user_email TEXT;
ALTER TABLE events ADD COLUMN team TEXT;
ALTER TABLE events ADD COLUMN input_tokens INTEGER;
ALTER TABLE events ADD COLUMN output_tokens INTEGER;
ALTER TABLE events ADD COLUMN cached_input_tokens INTEGER;
ALTER TABLE events ADD COLUMN reasoning_tokens INTEGER;
ALTER TABLE events ADD COLUMN cost_usd REAL;

CREATE INDEX events_os_user ON events (os_user);
CREATE INDEX events_user_email ON events (user_email);
CREATE INDEX events_app ON events (app);
CREATE INDEX events_model ON events (model);
CREATE INDEX events_decision ON events (decision);
CREATE INDEX events_kind ON events (kind);
-- Replaces (device_id, time), which cannot give seq order for a device.
DROP INDEX events_device_time;
CREATE INDEX events_device ON events (device_id);

-- One row per (detector, event) that had findings: most events have none,
-- so this stays small, and `detector = ?` reads seqs in order from the key.
CREATE TABLE event_detectors (
    detector TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (detector, seq)
) WITHOUT ROWID;
CREATE INDEX event_detectors_seq ON event_detectors (seq);

-- Free text over prompt and response: contentless FTS5 keyed by seq (the
-- text lives once, in events.json); contentless_delete lets retention remove
-- an event's terms (`DELETE FROM events_fts WHERE rowid = seq`).
CREATE VIRTUAL TABLE events_fts USING fts5(
    body,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Deleting an event (retention) deletes its search rows with it.
CREATE TRIGGER events_search_cleanup AFTER DELETE ON events BEGIN
    DELETE FROM events_fts WHERE rowid = old.seq;
    DELETE FROM event_detectors WHERE seq = old.seq;
END;

-- Backfill what was stored before this migration.
UPDATE events SET
    os_user = json_extract(json, '$.user.os_user'),
    user_email = json_extract(json, '$.user.email'),
    team = json_extract(json, '$.user.team'),
    input_tokens = json_extract(json, '$.usage.input_tokens'),
    output_tokens = json_extract(json, '$.usage.output_tokens'),
    cached_input_tokens = json_extract(json, '$.usage.cached_input_tokens'),
    reasoning_tokens = json_extract(json, '$.usage.reasoning_tokens'),
    cost_usd = json_extract(json, '$.cost_usd')
WHERE json_valid(json);
INSERT OR IGNORE INTO event_detectors (detector, seq)
    SELECT json_extract(f.value, '$.detector'), e.seq
    FROM events e, json_each(e.json, '$.findings') f
    WHERE json_valid(e.json) AND json_extract(f.value, '$.detector') IS NOT NULL;
INSERT INTO events_fts (rowid, body)
    SELECT seq, trim(coalesce(json_extract(json, '$.request.prompt'), '') || ' ' ||
                     coalesce(json_extract(json, '$.response.text'), ''))
    FROM events
    WHERE json_valid(json) AND kind = 'interaction';
