"""ONNX quantization: calibration data feeding (calibration.py) split from the quantizers (onnx.py)."""
