"""openrs-pl: a PyTorch Lightning GRPO trainer for the Open-RS recipe."""
