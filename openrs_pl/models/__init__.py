"""Model builders. Real runs load hub ids with ``from_pretrained``; tests and the demo build tiny ones offline."""
