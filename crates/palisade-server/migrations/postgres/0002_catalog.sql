-- Fleet catalog: one row per distinct app / MCP server (kind, item_id) across
-- every device, with the admin's decision. Which devices an item is on lives
-- in `inventory` (full snapshots keep it current); catalog rows are never
-- removed by a snapshot, so a decision outlives the item's presence.
CREATE TABLE catalog_items (
    kind       TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied')),
    note       TEXT,
    decided_by TEXT,
    decided_at BIGINT,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    PRIMARY KEY (kind, item_id)
);
CREATE INDEX catalog_items_status ON catalog_items (status, kind);

-- Every name an item has been reported under.
CREATE TABLE catalog_names (
    kind       TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    PRIMARY KEY (kind, item_id, name)
);

-- Devices per catalog item.
CREATE INDEX inventory_kind_item ON inventory (kind, item_id);

-- Items already reported before this migration start as pending.
INSERT INTO catalog_items (kind, item_id, name, status, first_seen, last_seen)
SELECT kind, item_id, MAX(name), 'pending', MIN(first_seen), MAX(last_seen)
FROM inventory WHERE kind IN ('app', 'mcp_server') GROUP BY kind, item_id;
INSERT INTO catalog_names (kind, item_id, name, first_seen, last_seen)
SELECT kind, item_id, name, MIN(first_seen), MAX(last_seen)
FROM inventory WHERE kind IN ('app', 'mcp_server') AND name <> '' GROUP BY kind, item_id, name;
