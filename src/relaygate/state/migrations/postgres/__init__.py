"""The Postgres backend's numbered migrations (NNNN_name.sql), applied in order, each once."""
