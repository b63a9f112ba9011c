"""moebius_edge.quantize: FP16 (and, next, INT8) variants of the exported graphs. ONNX in, ONNX out.

``moebius-edge quantize --models DIR`` (``job.quantize_models``) turns the FP32 graphs of a models
folder into ``DIR/<precision>/``, a complete models folder of its own written through
``moebius_edge.models``, behind a quality gate measured against FP32 (docs/style.md §4):

* ``calibration``: real photos, seeded user-like masks, FP32 pipeline trajectories;
* ``fp16``: ``convert_float_to_float16`` with an FP32 keep-list found by measurement;
* ``evaluate``, ``gate``: figures against FP32 on held-out photos, and the verdict;
* ``recipe``, ``report``: what was done (``recipe.json``) and what was measured (``report.*``);
* ``graph``: ONNX plumbing (instrumentation, atomic saves).

Never torch. This package imports only onnx, ONNX Runtime, NumPy, OpenCV and the runtime.
``onnxruntime.tools`` (``quant_pre_process``, the symbolic shape inference) imports torch whenever
it is installed, so nothing here uses it: element types come from ``onnx.shape_inference``, and a
test runs a whole quantize in a process where importing torch raises and checks what got
imported. (``onnxruntime.transformers.float16`` itself is torch-free, though importing
``onnxruntime.transformers`` appends that folder to ``sys.path``, ORT's own doing.)
"""
