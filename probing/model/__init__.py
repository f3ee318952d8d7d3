"""The language model: loading (hub, folder, GGUF conversion), its block layout and hooks."""
