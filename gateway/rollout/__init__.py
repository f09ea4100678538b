"""Versioned rollout: per-model policy (stable, canary, shadow), its shared store, routing and the guard."""
