"""moebius_edge.quantize: FP16 and INT8 variants of the exported graphs (ONNX in, ONNX out)."""
