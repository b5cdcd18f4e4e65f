"""Desktop-side export to TFLite, ONNX and TensorRT. Imports bcedge, never the reverse."""
