"""The language model: which weights a name means (sources), loading them (loading) on a device and in a
dtype (devices), what they are (fingerprint), GGUF conversion into the per-user model cache (conversion),
and where the decoder blocks are, with hooks on their outputs (layout)."""
