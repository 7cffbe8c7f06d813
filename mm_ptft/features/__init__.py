"""Signal features computed the same way by data pipelines and encoders (a component both import)."""
