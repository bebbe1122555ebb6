"""TTFNet (Liu et al., AAAI 2020) as a PyTorch Lightning library with Hydra-composed experiments."""

from . import config as _config  # noqa: F401  (registers the typed config schema and resolvers with Hydra)
