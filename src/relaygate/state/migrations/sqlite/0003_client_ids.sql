-- Limits, budgets and reports belong to the client, not its display name (SPEC §6): the ledger
-- and the daily aggregates are keyed by the client's id; `client` keeps the name it had then.
-- Rows written before this migration knew only the name, which stands in for the id.
ALTER TABLE ledger ADD COLUMN client_id TEXT;
UPDATE ledger SET client_id = client;
CREATE INDEX IF NOT EXISTS ledger_day_client_id ON ledger (day, client_id);

CREATE TABLE usage_daily_v3 (
    day               TEXT NOT NULL,
    client_id         TEXT NOT NULL,
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
    PRIMARY KEY (day, client_id, provider, model, key_id)
);
INSERT INTO usage_daily_v3
SELECT day, client, client, provider, model, key_id, requests, errors, prompt_tokens,
       completion_tokens, cached_tokens, cost_usd, latency_ms_sum
FROM usage_daily;
DROP TABLE usage_daily;
ALTER TABLE usage_daily_v3 RENAME TO usage_daily;
