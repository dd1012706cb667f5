-- The durable state in Postgres: the same tables as SQLite's (storage/migrations), keyed the
-- same way, with times and costs as double precision and counts as bigint.

CREATE TABLE IF NOT EXISTS upstream_keys (
    key_id          text PRIMARY KEY,
    provider        text NOT NULL,
    state           text NOT NULL DEFAULT 'ready',
    until           double precision,
    reason          text,
    fail_streak     bigint NOT NULL DEFAULT 0,
    next_cooldown_s double precision NOT NULL DEFAULT 0,
    day             text NOT NULL DEFAULT '',
    requests_today  bigint NOT NULL DEFAULT 0,
    tokens_today    bigint NOT NULL DEFAULT 0,
    requests_total  bigint NOT NULL DEFAULT 0,
    tokens_total    bigint NOT NULL DEFAULT 0,
    updated_at      double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS provider_pauses (
    provider text PRIMARY KEY,
    until    double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS clients (
    id                 text PRIMARY KEY,
    name               text NOT NULL,
    key_hash           text NOT NULL UNIQUE,
    key_hint           text NOT NULL,
    rpm                bigint,
    tpm                bigint,
    monthly_budget_usd double precision,
    models             text,  -- a JSON array of model names, or NULL for every model
    created_at         double precision NOT NULL,
    revoked_at         double precision
);

CREATE TABLE IF NOT EXISTS ledger (
    id                text PRIMARY KEY,
    ts                double precision NOT NULL,
    day               text NOT NULL,
    client_id         text,
    client            text,
    route             text NOT NULL,
    provider          text,
    model             text,
    key_id            text,
    status            integer NOT NULL,
    error_code        text,
    latency_ms        bigint NOT NULL,
    ttft_ms           bigint,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens     bigint NOT NULL DEFAULT 0,
    cost_usd          double precision NOT NULL DEFAULT 0,
    cache             text NOT NULL DEFAULT 'bypass',
    stream            boolean NOT NULL DEFAULT false,
    attempts          bigint NOT NULL DEFAULT 0,
    estimated         boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE INDEX IF NOT EXISTS ledger_day_client_id ON ledger (day, client_id);

CREATE TABLE IF NOT EXISTS usage_daily (
    day               text NOT NULL,
    client_id         text NOT NULL,
    client            text NOT NULL,  -- the client's name in the latest row (by ts)
    client_ts         double precision NOT NULL DEFAULT '-infinity',  -- that row's ts
    provider          text NOT NULL,
    model             text NOT NULL,
    key_id            text NOT NULL,
    requests          bigint NOT NULL DEFAULT 0,
    errors            bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens     bigint NOT NULL DEFAULT 0,
    cost_usd          double precision NOT NULL DEFAULT 0,
    latency_ms_sum    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, client_id, provider, model, key_id)
);

CREATE TABLE IF NOT EXISTS claims (
    name       text PRIMARY KEY,
    claimed_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
