"""Which nodes ONNX Runtime's XNNPACK execution provider takes: a table kept in this repository.

ONNX Runtime's usability checker (``onnxruntime.tools.mobile_helpers``) ships operator tables for
NNAPI and CoreML but none for XNNPACK, whose support is decided per node in C++. This module
transcribes those decisions from the ONNX Runtime source, by hand; re-read the files below and
update ``OPS`` and ``XnnpackChecker`` when the pinned onnxruntime (pyproject's mobile extra)
changes. Files read (github.com/microsoft/onnxruntime, ``onnxruntime/core/providers/xnnpack/``;
commit in brackets):

* ``xnnpack_execution_provider.cc`` [1b38b58]: the kernels registered (Conv, ConvTranspose,
  QLinearConvTranspose, MaxPool, AveragePool, Softmax, Resize, Gemm, MatMul, QLinearConv,
  QLinearAveragePool, QLinearSoftmax) and how QDQ node units are taken whole;
* ``detail/node_support_checker.cc`` [6479e4b]: the per-operator checks, and the Relu/Clip fusion
  into a preceding Conv/MaxPool/AveragePool;
* ``nn/conv_base.cc`` [d6efbe4], ``math/matmul.cc`` [d6efbe4], ``math/gemm.cc`` [2944c6f],
  ``math/softmax.cc`` [d018c97], ``tensor/resize.cc`` [590497b]: the conditions in ``OPS``.

XNNPACK is not a compiling EP: a "partition" here is a run of consecutive XNNPACK nodes, and each
boundary costs an NCHW↔NHWC transpose that ONNX Runtime inserts at session creation (the kernels
are NHWC), not a copy to another device. Checks this table does not make (they rarely matter
here): Conv groups other than 1 or C, pads/strides attributes, and the exact QDQ node-unit rules.
"""
from __future__ import annotations

SOURCE = "https://github.com/microsoft/onnxruntime/tree/main/onnxruntime/core/providers/xnnpack"

# ONNX operator -> the conditions under which XNNPACK takes it (what the report shows).
OPS = {
    "Conv": "2-D (rank-4 input with C, H, W known), float32, constant rank-4 weight and constant bias; "
            "in a QDQ unit: int8 activations with int8 weights (per-tensor or per-channel) or uint8 with "
            "uint8 (per-tensor); no uint8-activation × int8-weight kernel",
    "ConvTranspose": "as Conv (QDQ: no per-channel weights)",
    "MaxPool": "2-D, float32/uint8/int8",
    "AveragePool": "2-D, float32 or QDQ uint8",
    "Softmax": "over the last axis, float32 (or QDQ uint8 with output scale 1/256, zero point 0)",
    "Resize": "rank 4, mode linear (bilinear) only, constant scales/sizes that keep C, no antialias/axes",
    "Gemm": "float32, alpha = beta = 1, A and B at most 2-D, B and C constant initializers",
    "MatMul": "float32, A and B at most 2-D, B a constant initializer (a fully connected layer); "
              "no quantized MatMul kernel",
    "Relu": "only fused into the XNNPACK Conv/MaxPool/AveragePool that produces its input",
    "Clip": "only fused into the XNNPACK Conv/MaxPool/AveragePool that produces its input (constant min/max)",
    "DequantizeLinear": "only as part of a QDQ unit whose operator XNNPACK takes",
    "QuantizeLinear": "only as part of a QDQ unit whose operator XNNPACK takes",
}

_FLOAT, _UINT8, _INT8, _FLOAT16 = 1, 2, 3, 10
_NAMES = {_FLOAT: "float32", _UINT8: "uint8", _INT8: "int8", _FLOAT16: "float16", 7: "int64", 6: "int32"}
_FUSES_ACTIVATION = ("Conv", "MaxPool", "AveragePool")


class XnnpackChecker:
    """Decides, for every node of a shape-inferred model, whether XNNPACK takes it and why not.

    Duck-types the usability checker's ``_SupportedOpsChecker`` (``is_op_supported``,
    ``get_caveats``), so ONNX Runtime's own partitioning logic counts XNNPACK's partitions."""

    def __init__(self, model):
        g = model.graph
        self.init = {t.name: t for t in g.initializer}
        self.info = {v.name: v for v in (*g.input, *g.output, *g.value_info)}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.verdict = {}  # id(node) -> (supported, reason)
        for n in g.node:  # topological order: an activation's producer is decided before it
            if n.op_type not in ("DequantizeLinear", "QuantizeLinear"):
                self.verdict[id(n)] = self._check(n)
        for n in g.node:
            if n.op_type in ("DequantizeLinear", "QuantizeLinear"):
                self.verdict[id(n)] = self._check_qdq_edge(n)
        self._seen = set()

    # -- the checker interface ------------------------------------------------------------------
    def is_op_supported(self, node) -> bool:
        ok = self.verdict[id(node)][0]
        if ok and node.op_type in OPS:
            self._seen.add(node.op_type)
        return ok

    def reason(self, node) -> str:
        return self.verdict[id(node)][1]

    def get_caveats(self) -> list:
        return [f"ai.onnx:{op}:{OPS[op]}" for op in sorted(self._seen)]

    # -- helpers ----------------------------------------------------------------------------------
    def _shape(self, name):
        if name in self.init:
            return list(self.init[name].dims)
        vi = self.info.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    def _dtype(self, name):
        if name in self.init:
            return self.init[name].data_type
        vi = self.info.get(name)
        return vi.type.tensor_type.elem_type if vi is not None else None

    def _dq(self, name):
        p = self.producer.get(name)
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    @staticmethod
    def _attr(node, name, default):
        import onnx

        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def _float_only(self, node, name):
        t = self._dtype(name)
        if t == _FLOAT:
            return None
        if t == _FLOAT16:
            return "float16 tensor: the XNNPACK kernels of the referenced source are float32/uint8/int8"
        return f"{_NAMES.get(t, t)} tensor: XNNPACK takes float32 here"

    # -- per operator -------------------------------------------------------------------------------
    def _check(self, node):
        if node.domain not in ("", "ai.onnx"):
            return False, f"{node.domain} operator: XNNPACK takes ONNX operators only"
        op = node.op_type
        check = getattr(self, f"_check_{op.lower()}", None)
        if check is None:
            return False, "no XNNPACK kernel for this operator"
        return check(node)

    def _check_conv(self, node):
        x, w = node.input[0], node.input[1]
        if len(self._shape(x) or []) != 4:
            return False, "not a 2-D convolution (input rank is not 4)"
        dq_x, dq_w = self._dq(x), self._dq(w)
        if dq_x is not None and dq_w is not None:  # a QDQ convolution
            xt, wt = self._dtype(dq_x.input[0]), self._dtype(dq_w.input[0])
            per_channel = len(dq_w.input) > 1 and len(self._shape(dq_w.input[1]) or []) == 1 and \
                (self._shape(dq_w.input[1]) or [1])[0] > 1
            outs = self.consumers.get(node.output[0], [])
            yt = self._dtype(outs[0].output[0]) if outs and all(c.op_type == "QuantizeLinear" for c in outs) else None
            if dq_w.input[0] not in self.init:
                return False, "quantized weight is not a constant initializer"
            if (xt, wt, yt) == (_INT8, _INT8, _INT8) or ((xt, wt, yt) == (_UINT8, _UINT8, _UINT8) and not per_channel):
                return True, ""
            return False, (f"QDQ convolution with {_NAMES.get(xt, xt)} activations and {_NAMES.get(wt, wt)} "
                           f"weights: XNNPACK has int8×int8 and uint8×uint8 (per-tensor) kernels only")
        bad = self._float_only(node, x)
        if bad:
            return False, bad
        shape = self._shape(x)
        if any(not d for d in shape[1:]):
            return False, "C, H or W unknown"
        if w not in self.init or len(self.init[w].dims) != 4:
            return False, "weight is not a constant rank-4 initializer"
        if len(node.input) > 2 and node.input[2] and node.input[2] not in self.init:
            return False, "bias is not a constant initializer"
        return True, ""

    _check_convtranspose = _check_conv

    def _check_pool(self, node):
        if len(self._shape(node.input[0]) or []) != 4:
            return False, "not a 2-D pool (input rank is not 4)"
        return True, ""

    _check_maxpool = _check_averagepool = _check_pool

    def _check_softmax(self, node):
        bad = self._float_only(node, node.input[0])
        if bad:
            return False, bad
        rank = len(self._shape(node.input[0]) or [])
        axis = self._attr(node, "axis", -1)
        if axis not in (-1, rank - 1):
            return False, f"softmax over axis {axis}, not the last"
        return True, ""

    def _check_resize(self, node):
        mode = self._attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if len(self._shape(node.input[0]) or []) != 4:
            return False, "input rank is not 4"
        if mode != "linear":
            return False, f"mode {mode}: XNNPACK has bilinear resize only"
        consts = [i for i in node.input[2:] if i]
        if not consts or not all(i in self.init for i in consts):
            return False, "scales/sizes are not constant initializers"
        if self._attr(node, "antialias", 0) or self._attr(node, "axes", None):
            return False, "antialias or axes attribute"
        return True, ""

    def _check_gemm(self, node):
        if self._attr(node, "alpha", 1.0) != 1.0 or self._attr(node, "beta", 1.0) != 1.0:
            return False, "alpha or beta is not 1"
        a, b = node.input[0], node.input[1]
        if self._dq(a) is not None or self._dq(b) is not None:
            return False, "quantized Gemm: the XNNPACK EP has no quantized fully-connected kernel"
        bad = self._float_only(node, a)
        if bad:
            return False, bad
        if b not in self.init or (len(node.input) > 2 and node.input[2] and node.input[2] not in self.init):
            return False, "B or C is not a constant initializer"
        if len(self._shape(a) or [0, 0, 0]) >= 3 or len(self._shape(b) or [0, 0, 0]) >= 3:
            return False, "A or B has rank ≥ 3"
        return True, ""

    def _check_matmul(self, node):
        a, b = node.input[0], node.input[1]
        if self._dq(a) is not None or self._dq(b) is not None:
            return False, "quantized MatMul: the XNNPACK EP registers no quantized MatMul kernel"
        bad = self._float_only(node, a)
        if bad:
            return False, bad
        if b not in self.init:
            return False, "B is an activation, not a constant initializer (activation × activation MatMul)"
        ra, rb = len(self._shape(a) or []), len(self._shape(b) or [])
        if ra > 2 or rb > 2:
            return False, f"batched MatMul (A rank {ra}, B rank {rb}): XNNPACK takes 2-D only"
        return True, ""

    def _check_activation(self, node):
        p = self.producer.get(node.input[0])
        if p is None or p.op_type not in _FUSES_ACTIVATION or not self.verdict.get(id(p), (False,))[0] \
                or self._dq(p.input[0]) is not None:
            return False, f"{node.op_type} is only fused into an XNNPACK Conv/MaxPool/AveragePool, and its input is not one"
        if node.op_type == "Clip" and not all(i in self.init for i in node.input[1:] if i):
            return False, "Clip min/max are not constant"
        return True, ""

    _check_relu = _check_clip = _check_activation

    def _check_qdq_edge(self, node):
        if node.op_type == "DequantizeLinear":
            users = self.consumers.get(node.output[0], [])
            ok = bool(users) and all(self.verdict.get(id(u), (False,))[0] for u in users)
        else:
            p = self.producer.get(node.input[0])
            ok = p is not None and self.verdict.get(id(p), (False,))[0]
        return (True, "") if ok else (False, "quantize/dequantize around an operator XNNPACK does not take")
