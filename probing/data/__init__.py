"""The statements: loading and checking CSVs, SAPLMA folders, and the built-in set."""
