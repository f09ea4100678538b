"""Model repository, versions, and (later) rollout policy."""
