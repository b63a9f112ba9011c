"""DDIM sampling in NumPy, exactly as the official Moebius pipeline runs it (docs/pipeline.md §5).

The official pipeline uses diffusers' ``DDIMScheduler`` with 1000 training steps, "leading"
timestep spacing, offset 0, ε-prediction, η = 0, no clipping and ``set_alpha_to_one``; the
img2img-style ``strength`` drops the first steps (strength 0.99 with 20 steps: 19 model steps
from t = 900). Notation follows Song et al., "Denoising Diffusion Implicit Models" (2021), eq. 12
with σ_t = 0:

    x̂₀      = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t
    x_{t−Δ}  = √ᾱ_{t−Δ}·x̂₀ + √(1 − ᾱ_{t−Δ})·ε

ᾱ is not recomputed here: the export stores the float32 table exactly as torch computed it in the
manifest (``contract.MANIFEST_ALPHAS_CUMPROD``), and every scalar is formed from those float32
values in float32, the way diffusers does it on float32 tensors. A float64 recomputation differs in
the last bits and moves one output value in ~50,000 by 1 LSB (tests/data/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moebius_edge import contract


def timesteps(num_steps: int, strength: float = contract.DEFAULT_STRENGTH,
              num_train_timesteps: int = contract.NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The model timesteps, int64, in the order they run.

    "leading" spacing: ``arange(steps)·(T // steps)`` reversed, plus the offset (0). ``strength``
    keeps the last ``min(int(steps·strength), steps)`` of them (diffusers img2img ``get_timesteps``).
    """
    if num_steps < 1:
        raise ValueError(f"steps must be at least 1, got {num_steps}")
    if num_steps > num_train_timesteps:
        raise ValueError(f"steps must be at most {num_train_timesteps}, got {num_steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    step_ratio = num_train_timesteps // num_steps
    full = (np.arange(num_steps) * step_ratio).round()[::-1].astype(np.int64) + contract.STEPS_OFFSET
    init = min(int(num_steps * strength), num_steps)
    if init < 1:
        raise ValueError(f"strength {strength} with {num_steps} steps leaves no denoising step "
                         f"(needs steps·strength ≥ 1)")
    return full[num_steps - init:].copy()


@dataclass(frozen=True)
class DDIMSchedule:
    """A DDIM schedule for one (steps, strength) choice. Build it with ``DDIMSchedule.create``."""

    timesteps: np.ndarray  # (S,) int64, model timesteps in running order
    alpha_t: np.ndarray  # (S,) float32, ᾱ_t for each model step
    alpha_prev: np.ndarray  # (S,) float32, ᾱ_{t−Δ} (1.0 after t = 0: set_alpha_to_one)
    alpha_start: np.float32  # ᾱ of the first timestep: the strength's noising level

    @classmethod
    def create(cls, alphas_cumprod, num_steps: int = contract.DEFAULT_STEPS,
               strength: float = contract.DEFAULT_STRENGTH) -> "DDIMSchedule":
        ac = np.asarray(alphas_cumprod, dtype=np.float32)
        if ac.shape != (contract.NUM_TRAIN_TIMESTEPS,):
            raise ValueError(f"alphas_cumprod must have {contract.NUM_TRAIN_TIMESTEPS} values, "
                             f"got shape {ac.shape}")
        ts = timesteps(num_steps, strength)
        # diffusers steps from t to t − T//steps (not to the next entry of the list).
        prev = ts - contract.NUM_TRAIN_TIMESTEPS // num_steps
        alpha_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], np.float32(1.0)).astype(np.float32)
        return cls(timesteps=ts, alpha_t=ac[ts].copy(), alpha_prev=alpha_prev, alpha_start=ac[ts[0]])

    def __len__(self) -> int:
        return len(self.timesteps)


def add_noise(x0: np.ndarray, noise: np.ndarray, alpha: np.float32) -> np.ndarray:
    """Forward process q(x_t | x₀) = √ᾱ_t·x₀ + √(1 − ᾱ_t)·noise (diffusers ``add_noise``), float32."""
    a = np.float32(alpha)
    return (np.sqrt(a) * x0 + np.sqrt(np.float32(1.0) - a) * noise).astype(np.float32, copy=False)


def ddim_step(x_t: np.ndarray, eps: np.ndarray, alpha_t: np.float32, alpha_prev: np.float32) -> np.ndarray:
    """One deterministic DDIM update (η = 0): x_t, ε → x_{t−Δ}. Float32 throughout, with the
    operations in diffusers' order so that the result matches it bit for bit."""
    a_t, a_prev = np.float32(alpha_t), np.float32(alpha_prev)
    one = np.float32(1.0)
    x0_hat = (x_t - np.sqrt(one - a_t) * eps) / np.sqrt(a_t)
    direction = np.sqrt(one - a_prev) * eps  # σ_t = 0, so the direction term keeps all of 1 − ᾱ_prev
    return (np.sqrt(a_prev) * x0_hat + direction).astype(np.float32, copy=False)
