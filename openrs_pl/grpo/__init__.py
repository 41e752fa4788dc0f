"""GRPO: the loss family as pure tensor functions, and the Lightning module that trains with them."""
