-- Once-only work (the daily report): the first caller of a name holds it until it expires.
CREATE TABLE IF NOT EXISTS claims (
    name       TEXT PRIMARY KEY,
    claimed_at REAL NOT NULL,
    expires_at REAL NOT NULL
);

-- A provider throttled as a whole, until a time; a later pause only extends it.
CREATE TABLE IF NOT EXISTS provider_pauses (
    provider TEXT PRIMARY KEY,
    until    REAL NOT NULL
);
