CREATE TABLE IF NOT EXISTS ledger (
    id                TEXT PRIMARY KEY,
    ts                REAL NOT NULL,
    day               TEXT NOT NULL,
    client            TEXT,
    route             TEXT NOT NULL,
    provider          TEXT,
    model             TEXT,
    key_id            TEXT,
    status            INTEGER NOT NULL,
    error_code        TEXT,
    latency_ms        INTEGER NOT NULL,
    ttft_ms           INTEGER,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    cache             TEXT NOT NULL DEFAULT 'bypass',
    stream            INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    estimated         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE INDEX IF NOT EXISTS ledger_day_client ON ledger (day, client);

CREATE TABLE IF NOT EXISTS usage_daily (
    day               TEXT NOT NULL,
    client            TEXT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    errors            INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    latency_ms_sum    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, client, provider, model, key_id)
);
