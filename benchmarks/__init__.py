"""Benchmarks, run from the repository root as modules: `python -m benchmarks.run` (all of
them, one table and one JSON), or one of them, e.g. `python -m benchmarks.train_step --help`."""
