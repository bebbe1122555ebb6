"""Paper layer: the table sweeps' aggregator (``tables``), the ambiguity analysis (``analyze``), the
published values (``results.yaml``), figures and plots, and FPS re-measurement. Imports the training, data and
core layers."""
