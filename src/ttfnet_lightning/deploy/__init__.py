"""Deploy layer: export (ONNX, TorchScript, torch.export), the onnxruntime runner, and prediction on
image files. Imports the training, data and core layers."""
