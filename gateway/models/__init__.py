"""The model registry: reading the Triton repository, loading versions, keeping them in line with it."""
