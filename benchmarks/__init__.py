"""ddpmlab's benchmark scripts (never part of the library or of its tests).

Run each from the repository root as a module, e.g. ``python -m benchmarks.train_sample --help``;
the shared measuring code is :mod:`benchmarks.harness`, the results go to ``benchmarks/results/<script>/``.
"""
