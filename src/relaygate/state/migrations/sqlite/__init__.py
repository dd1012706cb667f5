"""The SQLite backend's numbered migrations (NNNN_name.sql), applied in order, each once, their
number kept in `PRAGMA user_version`. 0001-0003 are those of the storage module before the state
seam, unchanged, so a database it created carries on where it was."""
