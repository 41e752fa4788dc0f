"""Problem data: bundled benchmarks and training set, prompt building, the DataModule."""
