-- Add the DNS cache table and its lookup indexes.
-- schema_version: 1.1.0
-- migrate:up
CREATE TABLE IF NOT EXISTS dns_cache (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    ttl INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    UNIQUE(name, type)
);
CREATE INDEX IF NOT EXISTS idx_dns_cache_name ON dns_cache(name);
CREATE INDEX IF NOT EXISTS idx_dns_cache_expires ON dns_cache(expires_at);

-- migrate:down
DROP TABLE IF EXISTS dns_cache;

-- migrate:verify
-- each query is an assertion: its rows' first values must be true
SELECT count(*) = 1 FROM sqlite_master WHERE type = 'table' AND name = 'dns_cache';
