"""Training layer: config schema, LightningModule, optimiser, metrics, callbacks, distributed glue,
tracking (W&B), checkpoints, run records and locks, and the plain ``train(cfg)`` / ``evaluate(cfg)``
functions the command line wraps. Imports the data and core layers."""
