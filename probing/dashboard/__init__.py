"""The dashboard's support code (charts, background jobs, settings); the engine never imports it."""
