"""Rollouts: generation engines, the typed prompt and rollout batches and the callback that drives them."""
