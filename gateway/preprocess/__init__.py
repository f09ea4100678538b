"""Image decoding and per-model input preparation."""
