"""Side-by-side comparisons, one module each, run under one set of rules by ``python -m benchmarks.run_all``."""
