"""moebius-edge: the Moebius inpainting model on ONNX Runtime (CPU, CUDA, mobile).

The base package is the runtime: numpy, onnxruntime and image I/O only. Importing it never
imports torch; ``moebius_edge.export`` is the only place torch is used.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "Inpainter"]


def __getattr__(name):
    # Lazy so that `moebius-edge --version` and `import moebius_edge` stay instant.
    if name == "Inpainter":
        from moebius_edge.pipeline import Inpainter

        return Inpainter
    raise AttributeError(name)
