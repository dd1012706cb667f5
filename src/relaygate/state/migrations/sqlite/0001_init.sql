CREATE TABLE IF NOT EXISTS upstream_keys (
    key_id          TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'ready',
    until           REAL,
    reason          TEXT,
    fail_streak     INTEGER NOT NULL DEFAULT 0,
    next_cooldown_s REAL NOT NULL DEFAULT 0,
    day             TEXT NOT NULL DEFAULT '',
    requests_today  INTEGER NOT NULL DEFAULT 0,
    tokens_today    INTEGER NOT NULL DEFAULT 0,
    requests_total  INTEGER NOT NULL DEFAULT 0,
    tokens_total    INTEGER NOT NULL DEFAULT 0,
    updated_at      REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS clients (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    key_hash            TEXT NOT NULL UNIQUE,
    key_hint            TEXT NOT NULL,
    rpm                 INTEGER,
    tpm                 INTEGER,
    monthly_budget_usd  REAL,
    models              TEXT,
    created_at          REAL NOT NULL,
    revoked_at          REAL
);
