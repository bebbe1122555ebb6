"""TTFNet (Liu et al., AAAI 2020) as a PyTorch Lightning library with Hydra-composed experiments.

Layers (each a package; a lower one never imports a higher one, see docs/architecture.md): ``core``
(network, target encoder, losses, decoder, inference path, drawing) -> ``data`` -> ``training`` ->
``deploy`` / ``paper``; the command-line modules (``train``, ``evaluate``, ``predict``, ``export``,
``tables``, ``analyze``, ``speed``, ``viz``) on top."""

from ttfnet_lightning.training import config as _config  # noqa: F401  (registers the config schema and resolvers with Hydra)
