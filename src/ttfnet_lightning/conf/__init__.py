"""Hydra configs of ttfnet-lightning (a package so that the console scripts find them as pkg://ttfnet_lightning.conf)."""
