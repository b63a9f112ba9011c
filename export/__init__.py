"""moebius_edge.export: the PyTorch side (model definition, checkpoint loading, ONNX export).

The only package of moebius-edge that imports torch; it needs the ``export`` extra.
"""
