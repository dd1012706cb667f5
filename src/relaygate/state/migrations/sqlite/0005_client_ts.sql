-- A client is named by the name of its latest row (SPEC §6), across days and aggregates: each
-- aggregate keeps the time of the row its `client` came from. Rows written before this knew no
-- time (0): any later row's name wins over theirs.
ALTER TABLE usage_daily ADD COLUMN client_ts REAL NOT NULL DEFAULT 0;
