"""Workflows built on the run path (``mm_ptft.run``): cross-validation, sweeps, few-shot evaluation, the quickstart."""
