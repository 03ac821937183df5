"""Deployment: ONNX and TFLite export, int8 quantisation, runtimes."""
