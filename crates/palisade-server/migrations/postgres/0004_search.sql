-- Event search and usage (issue #6). Every listing is ordered by seq (newest
-- first, cursor = seq), so each equality filter gets a (col, seq) index:
-- `col = $1 ORDER BY seq DESC LIMIT n` is one backward index scan that stops
-- after a page. Low-cardinality columns that usually match a large share of
-- rows (provider) get no index: walking seq and filtering finds a page fast.
-- Indexes cost ingest time, so there is none for team or the token/cost
-- columns (usage aggregates over a time range).
ALTER TABLE events ADD COLUMN os_user TEXT;
ALTER TABLE events ADD COLUMN user_email TEXT;
ALTER TABLE events ADD COLUMN team TEXT;
ALTER TABLE events ADD COLUMN input_tokens BIGINT;
ALTER TABLE events ADD COLUMN output_tokens BIGINT;
ALTER TABLE events ADD COLUMN cached_input_tokens BIGINT;
ALTER TABLE events ADD COLUMN reasoning_tokens BIGINT;
ALTER TABLE events ADD COLUMN cost_usd DOUBLE PRECISION;
-- Prompt + response text as a 'simple' (language-agnostic, no stemming)
-- tsvector, computed at insert from the text the server already parsed;
-- retention sets it to NULL when it purges content.
ALTER TABLE events ADD COLUMN search_tsv TSVECTOR;

CREATE INDEX events_os_user_seq ON events (os_user, seq);
CREATE INDEX events_user_email_seq ON events (user_email, seq);
CREATE INDEX events_app_seq ON events (app, seq);
CREATE INDEX events_model_seq ON events (model, seq);
CREATE INDEX events_decision_seq ON events (decision, seq);
CREATE INDEX events_kind_seq ON events (kind, seq);
-- Replaces (device_id, time), which cannot give seq order for a device.
DROP INDEX events_device_time;
CREATE INDEX events_device_seq ON events (device_id, seq);
CREATE INDEX events_search_tsv ON events USING GIN (search_tsv) WITH (fastupdate = on);

-- One row per (detector, event) that had findings: most events have none.
-- Deleting an event (retention) deletes its rows (the seq index serves it).
CREATE TABLE event_detectors (
    detector TEXT NOT NULL,
    seq      BIGINT NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    PRIMARY KEY (detector, seq)
);
CREATE INDEX event_detectors_seq ON event_detectors (seq);

-- Backfill what was stored before this migration.
UPDATE events SET
    os_user = j->'user'->>'os_user',
    user_email = j->'user'->>'email',
    team = j->'user'->>'team',
    input_tokens = (j->'usage'->>'input_tokens')::BIGINT,
    output_tokens = (j->'usage'->>'output_tokens')::BIGINT,
    cached_input_tokens = (j->'usage'->>'cached_input_tokens')::BIGINT,
    reasoning_tokens = (j->'usage'->>'reasoning_tokens')::BIGINT,
    cost_usd = (j->>'cost_usd')::DOUBLE PRECISION,
    search_tsv = CASE WHEN kind = 'interaction' THEN to_tsvector('simple',
        coalesce(j->'request'->>'prompt', '') || ' ' || coalesce(j->'response'->>'text', '')) END
FROM (SELECT seq AS s, json::jsonb AS j FROM events) AS parsed
WHERE events.seq = parsed.s;
INSERT INTO event_detectors (detector, seq)
    SELECT DISTINCT f->>'detector', e.seq
    FROM events e, jsonb_array_elements(CASE WHEN jsonb_typeof(e.json::jsonb->'findings') = 'array'
                                             THEN e.json::jsonb->'findings' ELSE '[]'::jsonb END) f
    WHERE f->>'detector' IS NOT NULL
ON CONFLICT DO NOTHING;
