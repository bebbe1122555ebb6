"""Core layer: the network (``models``), target encoder (``targets``), losses, decoder (``decode``), the
inference path and drawing on images. Imports only torch, torchvision, PIL, numpy and the standard library;
each unit is testable without Lightning or Hydra."""
