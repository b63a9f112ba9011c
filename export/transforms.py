"""Weight transforms on the way to ONNX, kept out of the model file (which only defines the model).

* ``fold_batchnorm``: every eval BatchNorm folded into the linear map before it (export only:
  the folded model computes the same function but loses the official state-dict layout);
* ``order_local_queries``: the local λ's query rows reordered by key, so that the graph needs no
  (K, h) transpose before the λ product (export only, after ``fold_batchnorm``);
* ``perturb_for_testing_``: non-trivial BatchNorm statistics and norm affines for random-init
  models, so that parity checks exercise the folding (``export --random-init``, benchmarks).
"""
from __future__ import annotations

import torch
from torch import nn

from moebius_edge.export.model import LocalLambda


def perturb_for_testing_(model: nn.Module, seed: int) -> nn.Module:
    """Give a random-init model non-trivial BatchNorm statistics and norm affines, as the official
    golden weights have (tests/data/README.md), so that eval-mode BatchNorm folding and every
    affine norm are really exercised by parity checks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                for t, (scale, shift) in ((mod.weight, (0.1, 1.0)), (mod.bias, (0.1, 0.0)), (mod.running_mean, (0.1, 0.0))):
                    t.copy_(torch.randn(t.shape, generator=g) * scale + shift)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
            elif isinstance(mod, (nn.GroupNorm, nn.LayerNorm)):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.1 + 1.0)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            elif isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.02)
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval BatchNorm into the linear map before it, in place (export only).

    The folded model computes the same function but no longer has the official state-dict
    layout (the BNs become Identity, the folded convs gain biases)."""
    with torch.no_grad():
        for mod in list(model.modules()):
            for lin_name, bn_name in getattr(mod, "BN_FOLDS", ()):
                lin, bn = getattr(mod, lin_name), getattr(mod, bn_name)
                if isinstance(bn, nn.Identity):
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w = lin.weight * scale.reshape(-1, *([1] * (lin.weight.dim() - 1)))
                b0 = lin.bias if lin.bias is not None else torch.zeros_like(bn.running_mean)
                lin.weight = nn.Parameter(w)
                lin.bias = nn.Parameter((b0 - bn.running_mean) * scale + bn.bias)
                setattr(mod, bn_name, nn.Identity())
    return model


def order_local_queries(model: nn.Module) -> nn.Module:
    """Reorder every local λ's ``to_q`` rows from the official h·K + κ to κ·h + head, in place
    (export only, after ``fold_batchnorm``: its ``norm_q`` must be folded in already).

    The queries are then (B, N, K, h) as they come out of the projection, and the λ product
    ``Λ·q`` takes them without the (h, K) transpose: the same values (a permutation of the rows),
    one memory-bound Transpose less per stage. ONNX Runtime fuses that transpose into an FP32
    MatMul anyway, but not into the INT8 one (the README's local-queries table, from
    benchmarks/pipeline.py)."""
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, LocalLambda) or mod.queries_by_key:
                continue
            if not isinstance(mod.norm_q, nn.Identity):
                raise ValueError("order_local_queries needs the BatchNorms folded first (fold_batchnorm)")
            h, k = mod.heads, mod.k
            rows = torch.arange(h * k).reshape(h, k).t().reshape(-1)  # new row κ·h + head = old head·K + κ
            mod.to_q.weight = nn.Parameter(mod.to_q.weight[rows])
            if mod.to_q.bias is not None:
                mod.to_q.bias = nn.Parameter(mod.to_q.bias[rows])
            mod.queries_by_key = True
    return model
