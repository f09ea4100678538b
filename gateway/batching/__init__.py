"""The dynamic batcher: one per model version, configured from config.pbtxt."""
