"""Training loop, optimisation, checkpoints, logging, distributed setup."""
