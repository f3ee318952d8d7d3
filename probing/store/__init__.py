"""Hidden states on disk: the crash-safe activation store, its format, merging and migration."""
