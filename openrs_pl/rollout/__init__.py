"""Rollouts: generation engines, the typed rollout batch and the callback that drives them."""
