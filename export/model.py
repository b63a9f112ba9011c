"""The Moebius student UNet in plain PyTorch (docs/model.md §4–§7; bare § below are its sections).

Attribute names and registration order *are* the official checkpoint keys
(``tests/data/moebius_state_dict.json``), so loading is a strict key-for-key copy.
The arithmetic is the official one; only the evaluation order is chosen for export
(docs/model.md §10.1), each choice exact in real arithmetic:

* every λ einsum is a batched MatMul;
* the self-λ Conv3d(1→K, 1×15×15) runs as a Conv2d(1→K, 15×15) on the values viewed as
  ``[B·V, 1, H, W]`` (the official 5-D weight is kept as the parameter);
* the cross-λ position term uses the re-association ``A = Q·R`` then ``A·Vm`` (§5.2), fused with
  the content term into one MatMul: ``Y = [Q | A]·[Λc ; Vm]``; ``Λp = R·Vm`` is never built;
* the LλMI token stream stays ``[B, N, C]`` and the λ projections are MatMuls on it (the official
  1×1 convs and BatchNorm2d, with the same weights and keys).

The model is inference-only: BatchNorms are always evaluated with their running statistics.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moebius_edge.export.config import MoebiusConfig


def _tokens_bn(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval BatchNorm over the last axis of ``x`` (``[..., C]``); identity once folded."""
    if isinstance(bn, nn.Identity):
        return x
    shape = x.shape
    return F.batch_norm(x.reshape(-1, shape[-1]), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        False, 0.0, bn.eps).reshape(shape)


def _linear(x: torch.Tensor, conv_or_linear: nn.Module) -> torch.Tensor:
    """A 1×1 conv (official weight ``[out, in, 1, 1]``) or a Linear applied to tokens ``[..., in]``."""
    w = conv_or_linear.weight
    return F.linear(x, w.reshape(w.shape[0], -1), conv_or_linear.bias)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, N, C), n = y·W + x


def _to_map(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------
# §4 building blocks
class DepthwiseSeparableConv(nn.Module):
    """timm ``DepthwiseSeparableConv`` with defaults (§4.1): DW3×3 → BN → ReLU → PW1×1 → BN (+x)."""

    BN_FOLDS = (("conv_dw", "bn1"), ("conv_pw", "bn2"))

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)  # timm BatchNormAct2d: plain BN keys, ReLU applied below
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.has_skip = cin == cout  # timm: stride 1 and in == out

    def forward(self, x):
        y = F.relu(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return y + x if self.has_skip else y


class DWResnetBlock2D(nn.Module):
    """DW.Res block (§4.2)."""

    def __init__(self, cfg: MoebiusConfig, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.NORM_GROUPS, cin, eps=cfg.NORM_EPS)
        self.conv1 = DepthwiseSeparableConv(cin, cout)
        self.time_emb_proj = nn.Linear(cfg.time_embed_dim, cout)
        self.norm2 = nn.GroupNorm(cfg.NORM_GROUPS, cout, eps=cfg.NORM_EPS)
        self.conv2 = DepthwiseSeparableConv(cout, cout)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):  # x (B, Cin, H, W), emb (B, 4·C0)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class TimestepEmbedding(nn.Module):
    """§4.3: sinusoidal τ(t) (cos first, no shift) → Linear → SiLU → Linear."""

    def __init__(self, c0: int, dim: int):
        super().__init__()
        self.half = c0 // 2
        self.linear_1 = nn.Linear(c0, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def sinusoid(self, timesteps: torch.Tensor) -> torch.Tensor:
        # Same float32 op order as diffusers get_timestep_embedding (bit-for-bit with the goldens).
        exponent = -math.log(10000) * torch.arange(self.half, dtype=torch.float32, device=timesteps.device)
        freqs = torch.exp(exponent / self.half)
        args = timesteps[:, None].float() * freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, timesteps):  # (B,) int64 → (B, 4·C0)
        return self.linear_2(F.silu(self.linear_1(self.sinusoid(timesteps))))


class Downsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ---------------------------------------------------------------------------------------------
# §5 LλMI
class PosConv(nn.Module):
    """The self-λ position conv: official Conv3d(1→K, kernel (1,15,15)) weight and bias, evaluated
    as a Conv2d(1→K, 15×15) over the V value channels folded into the batch (no 5-D conv: CoreML,
    NNAPI and most CPU kernels lack it)."""

    def __init__(self, k: int, window: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, 1, 1, window, window))
        self.bias = nn.Parameter(torch.empty(k))
        fan_in = window * window
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, v):  # (B·V, 1, H, W) → (B·V, K, H, W)
        w = self.weight
        return F.conv2d(v, w.reshape(w.shape[0], 1, w.shape[3], w.shape[4]), self.bias, padding=w.shape[-1] // 2)


class LocalLambda(nn.Module):
    """Local-λ self layer, ``attn1`` (§5.1). Tokens in, tokens out."""

    BN_FOLDS = (("to_q", "norm_q"), ("to_v", "norm_v"))

    def __init__(self, cfg: MoebiusConfig, c: int):
        super().__init__()
        h = cfg.heads
        k = v = c // h
        self.heads, self.k, self.v = h, k, v
        self.to_q = nn.Conv2d(c, h * k, 1, bias=False)
        self.to_k = nn.Conv2d(c, k, 1, bias=False)
        self.to_v = nn.Conv2d(c, v, 1, bias=False)
        # BatchNorm2d in the reference; BatchNorm1d here has the same keys and runs on tokens.
        self.norm_q = nn.BatchNorm1d(h * k)
        self.norm_v = nn.BatchNorm1d(v)
        self.pos_conv = PosConv(k, cfg.LOCAL_WINDOW)
        # False: to_q's rows in the official order, channel h·K + κ. True: ordered κ·h + head, so
        # that the queries come out as (B, N, K, h) with no transpose (export only:
        # transforms.order_local_queries).
        self.queries_by_key = False

    def forward(self, x, hw):  # x (B, N, C)
        hh, ww = hw
        b, n, _ = x.shape
        q = _tokens_bn(self.norm_q, _linear(x, self.to_q))  # (B, N, h·K)
        if self.queries_by_key:
            q = q.reshape(b, n, self.k, self.heads)  # (B, N, K, h)
        else:
            q = q.reshape(b, n, self.heads, self.k).transpose(2, 3)  # (B, N, K, h)
        kbar = torch.softmax(_linear(x, self.to_k), dim=1)  # (B, N, K): softmax over all positions
        vm = _tokens_bn(self.norm_v, _linear(x, self.to_v))  # (B, N, V)
        lam_c = kbar.transpose(1, 2) @ vm  # (B, K, V): content lambda, size independent of N
        # Position lambda Λp[κ, ν, n] = b[κ] + (P[κ] ⋆ Vm[ν])[n], as a 2-D conv over B·V maps.
        vmap = vm.transpose(1, 2).reshape(b * self.v, 1, hh, ww)
        # Channels last first: ORT runs an INT8 conv in NHWC and cancels its own NHWC → NCHW
        # transpose against this one, so one (V, N) block swap is left instead of two transposes
        # (the same values; measured 0.90x the time of reshape(b, V, K, N).permute(0, 3, 1, 2) on
        # stage 0 in FP32, 0.945x in INT8). The (0,3,2,1) form was ~13x slower than either.
        lam_p = self.pos_conv(vmap).permute(0, 2, 3, 1).reshape(b, self.v, n, self.k)  # (B, V, N, K)
        lam = lam_p.transpose(1, 2) + lam_c.transpose(1, 2)[:, None]  # (B, N, V, K)
        y = lam @ q  # (B, N, V, h) = Yc + Yp
        return y.transpose(2, 3).reshape(b, n, self.heads * self.v)  # channel h·V + ν


class InteractiveLambda(nn.Module):
    """Interactive-λ cross layer with the category context, ``attn2`` (§5.2)."""

    BN_FOLDS = (("to_q", "norm_q"), ("to_v", "norm_v"))

    def __init__(self, cfg: MoebiusConfig, c: int, side: int):
        super().__init__()
        h = cfg.heads
        k = v = c // h
        m = cfg.num_embeddings // 2
        self.heads, self.k, self.v = h, k, v
        # One row per absolute query position of the side×side map: ties the weights to one size.
        self.rel_pos_emb = nn.Parameter(torch.randn(side * side, m, k, 1))
        self.to_q = nn.Conv2d(c, h * k, 1, bias=False)
        self.to_k = nn.Linear(cfg.cross_attention_dim, k, bias=False)
        self.to_v = nn.Linear(cfg.cross_attention_dim, v, bias=False)
        self.norm_q = nn.BatchNorm1d(h * k)  # BatchNorm2d in the reference, same keys
        self.norm_v = nn.BatchNorm1d(v)

    def context_lambdas(self, ctx):
        """What depends only on the context: ``[Λc ; Vm]`` stacked, (B, K + L, V)."""
        kbar = torch.softmax(_linear(ctx, self.to_k), dim=1)  # (B, L, K): softmax over the L tokens
        vm = _tokens_bn(self.norm_v, _linear(ctx, self.to_v))  # (B, L, V)
        lam_c = kbar.transpose(1, 2) @ vm  # (B, K, V)
        return torch.cat([lam_c, vm], dim=1)

    def forward(self, x, ctx=None, lambdas=None):  # x (B, N, C); ctx (B, L, D) or lambdas (B, K+L, V)
        b, n, _ = x.shape
        if lambdas is None:
            lambdas = self.context_lambdas(ctx)
        q = _tokens_bn(self.norm_q, _linear(x, self.to_q)).reshape(b, n, self.heads, self.k)  # (B, N, h, K)
        r_t = self.rel_pos_emb[..., 0].transpose(1, 2)  # (N, K, L)
        a = q @ r_t  # (B, N, h, L): A = Q·R, never Λp = R·Vm (n²·K·V per row)
        y = torch.cat([q, a], dim=-1) @ lambdas[:, None]  # (B, N, h, V) = Q·Λc + A·Vm
        return y.reshape(b, n, self.heads * self.v)


class ConvLayer(nn.Module):
    """SANA ``ConvLayer`` as used by GLUMBConv: a conv under the key ``.conv``."""

    def __init__(self, cin, cout, k, groups=1, bias=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)

    def forward(self, x):
        return self.conv(x)


class MixFFN(nn.Module):
    """Mix-FFN, SANA GLUMBConv (§5.3). Hidden width int(2.5·C) regardless of the config."""

    def __init__(self, cfg: MoebiusConfig, c: int):
        super().__init__()
        f = int(cfg.MIX_FFN_RATIO * c)
        self.inverted_conv = ConvLayer(c, 2 * f, 1)
        self.depth_conv = ConvLayer(2 * f, 2 * f, 3, groups=2 * f)
        self.point_conv = ConvLayer(f, c, 1, bias=False)

    def forward(self, x, hw):  # tokens (B, N, C)
        d = self.depth_conv(F.silu(self.inverted_conv(_to_map(x, *hw))))
        p, g = d.chunk(2, dim=1)  # first half value, second half gate
        return _to_tokens(self.point_conv(p * F.silu(g)))


class LambdaTransformerBlock(nn.Module):
    def __init__(self, cfg: MoebiusConfig, c: int, side: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(c, eps=cfg.NORM_EPS)
        self.attn1 = LocalLambda(cfg, c)
        self.norm2 = nn.LayerNorm(c, eps=cfg.NORM_EPS)
        self.attn2 = InteractiveLambda(cfg, c, side)
        self.norm3 = nn.LayerNorm(c, eps=cfg.NORM_EPS)
        self.ff = MixFFN(cfg, c)

    def forward(self, t, hw, ctx=None, lambdas=None, double=False):
        t = t + self.attn1(self.norm1(t), hw)
        if double:  # one CFG half in, both out: the halves differ from the cross-λ on
            t = torch.cat([t, t], dim=0)
        t = t + self.attn2(self.norm2(t), ctx, lambdas)
        return t + self.ff(self.norm3(t), hw)


class LambdaMixStage(nn.Module):
    """One LλMI stage, ``attentions.j`` (§5): GN → proj_in → tokens → block → proj_out, + x."""

    def __init__(self, cfg: MoebiusConfig, c: int, side: int):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.NORM_GROUPS, c, eps=cfg.STAGE_NORM_EPS)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([LambdaTransformerBlock(cfg, c, side)])
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x, ctx=None, lambdas=None, double=False):  # x (B, C, H, W); (2B, ...) out if double
        hw = x.shape[2:]
        t = _to_tokens(self.proj_in(self.norm(x)))
        t = self.transformer_blocks[0](t, hw, ctx, lambdas, double)
        return self.proj_out(_to_map(t, *hw)) + (torch.cat([x, x], dim=0) if double else x)


# ---------------------------------------------------------------------------------------------
# §6 topology
class DownBlock(nn.Module):
    def __init__(self, cfg: MoebiusConfig, cin: int, cout: int, side: int, downsample: bool):
        super().__init__()
        n = cfg.LAYERS_PER_BLOCK
        # Registration order matters for the state-dict order: attentions before resnets.
        self.attentions = nn.ModuleList([LambdaMixStage(cfg, cout, side) for _ in range(n)])
        self.resnets = nn.ModuleList([DWResnetBlock2D(cfg, cin if j == 0 else cout, cout) for j in range(n)])
        self.downsamplers = nn.ModuleList([Downsample2D(cout)]) if downsample else None


class UpBlock(nn.Module):
    def __init__(self, cfg: MoebiusConfig, cins: list, cout: int, side: int, upsample: bool):
        super().__init__()
        self.attentions = nn.ModuleList([LambdaMixStage(cfg, cout, side) for _ in cins])
        self.resnets = nn.ModuleList([DWResnetBlock2D(cfg, cin, cout) for cin in cins])
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None


class MoebiusUNet(nn.Module):
    """``diff_model``: the DW.Res + LλMI UNet (no mid block)."""

    def __init__(self, cfg: MoebiusConfig):
        super().__init__()
        self.cfg = cfg
        ch = list(cfg.block_out_channels)
        c0 = ch[0]
        sides = [cfg.latent_size >> i for i in range(len(ch))]
        n = cfg.LAYERS_PER_BLOCK
        self.conv_in = DepthwiseSeparableConv(cfg.in_channels, c0)
        self.time_embedding = TimestepEmbedding(c0, cfg.time_embed_dim)
        self.encoder_hid_proj = nn.Linear(cfg.encoder_hid_dim, cfg.cross_attention_dim)
        self.down_blocks = nn.ModuleList()
        prev = c0
        for i, c in enumerate(ch):
            self.down_blocks.append(DownBlock(cfg, prev, c, sides[i], downsample=i < len(ch) - 1))
            prev = c
        self.up_blocks = nn.ModuleList()
        rc = ch[::-1]
        prev = rc[0]
        for i, c in enumerate(rc):
            # §6 in-channel rule: running tensor + popped skip.
            cins = [(prev if j == 0 else c) + (c if j < n else rc[min(i + 1, len(ch) - 1)]) for j in range(n + 1)]
            self.up_blocks.append(UpBlock(cfg, cins, c, sides[len(ch) - 1 - i], upsample=i < len(ch) - 1))
            prev = c
        self.conv_norm_out = nn.GroupNorm(cfg.NORM_GROUPS, c0, eps=cfg.NORM_EPS)
        self.conv_out = DepthwiseSeparableConv(c0, cfg.out_channels)

    def forward(self, sample, timesteps, ctx=None, lambdas=None, return_block_outputs=False, shared_prefix=False):
        """sample (B, 9, h, w); timesteps (B,) int64; either ``ctx`` (B, L, D) or per-stage
        precomputed cross lambdas ``lambdas`` (a list, one (B, K+L, V) tensor per stage in
        execution order). Returns (B, 4, h, w) [and the six block outputs].

        ``shared_prefix``: ``sample`` and ``timesteps`` are one CFG half (B rows) and ``ctx`` or
        ``lambdas`` both halves (2B rows, as in the official batch ``[x; x]``). Everything before
        the first cross-λ reads no context (conv_in, the time embedding, the first DW.Res block
        and the first stage's self-λ), so it runs once on B rows and the batch doubles there; the
        result equals the official forward on ``[x; x]``. Returns (2B, 4, h, w)."""
        emb = self.time_embedding(timesteps)
        lam = iter(lambdas) if lambdas is not None else None

        def stage(attn, h, double=False):
            return attn(h, ctx, next(lam) if lam is not None else None, double)

        h = self.conv_in(sample)
        skips = [h]
        block_outputs = []
        for blk in self.down_blocks:
            for res, attn in zip(blk.resnets, blk.attentions):
                h = stage(attn, res(h, emb), double=shared_prefix)
                if shared_prefix:  # the batch is 2B from here on
                    emb, skips[0], shared_prefix = torch.cat([emb, emb]), torch.cat([skips[0], skips[0]]), False
                skips.append(h)
            if blk.downsamplers is not None:
                h = blk.downsamplers[0](h)
                skips.append(h)
            block_outputs.append(h)
        for blk in self.up_blocks:
            for res, attn in zip(blk.resnets, blk.attentions):
                h = stage(attn, res(torch.cat([h, skips.pop()], dim=1), emb))
            if blk.upsamplers is not None:
                h = blk.upsamplers[0](h)
            block_outputs.append(h)
        out = self.conv_out(F.silu(self.conv_norm_out(h)))
        return (out, block_outputs) if return_block_outputs else out

    def stages(self):
        """The LλMI stages in execution order (the order of ``lambdas`` in forward)."""
        for blk in list(self.down_blocks) + list(self.up_blocks):
            yield from blk.attentions


class RemovalModel(nn.Module):
    """The official top-level module: category embedding + UNet (§1)."""

    def __init__(self, cfg: MoebiusConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding_layer = nn.Embedding(cfg.num_embeddings, cfg.encoder_hid_dim)
        self.diff_model = MoebiusUNet(cfg)

    def context(self, input_ids):  # (B, L) int64 → (B, L, D)
        return self.diff_model.encoder_hid_proj(self.embedding_layer(input_ids))

    def forward(self, noisy_latents, timesteps, input_ids, return_block_outputs=False):
        """Official forward: (2B, 9, h, w), timesteps (1,) / (2B,) / scalar int64, ids (2B, 10)."""
        b = noisy_latents.shape[0]
        timesteps = torch.as_tensor(timesteps, device=noisy_latents.device)
        if timesteps.dim() == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(b)
        return self.diff_model(noisy_latents, timesteps, ctx=self.context(input_ids),
                               return_block_outputs=return_block_outputs)


def build_removal_model(cfg: MoebiusConfig) -> RemovalModel:
    """A randomly initialised model in eval mode (the official initialisers' shapes and order)."""
    model = RemovalModel(cfg)
    for mod in model.modules():
        if isinstance(mod, nn.Linear):  # the reference Xavier-initialises every Linear
            nn.init.xavier_uniform_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    return model.eval()
