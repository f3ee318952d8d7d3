"""The command line: options generated from the config, the commands, and what they print."""
