"""The NumPy DDIM scheduler against diffusers' DDIMScheduler (test-only dependency) and the
official pipeline's recorded trajectory (pipeline_case.npz)."""
from pathlib import Path

import numpy as np
import pytest

from moebius_edge import contract
from moebius_edge.scheduler import DDIMSchedule, add_noise, ddim_step, timesteps

DATA = Path(__file__).parent / "data"


def _diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    s = contract.scheduler_metadata()
    return diffusers.DDIMScheduler(
        num_train_timesteps=s["num_train_timesteps"], beta_start=s["beta_start"],
        beta_end=s["beta_end"], beta_schedule=s["beta_schedule"], clip_sample=False,
        set_alpha_to_one=s["set_alpha_to_one"], steps_offset=s["steps_offset"],
        prediction_type=s["prediction_type"], timestep_spacing=s["timestep_spacing"])


def _assert_close(x, ref, rel=1e-6):
    # Relative to the tensor's magnitude, not elementwise: torch's `a ** 0.5` is not correctly
    # rounded (it differs from sqrt in the last bit for ~1/3 of the ᾱ table), so values that
    # come out of a cancellation near zero can differ by an ulp of the terms that cancelled.
    assert x.dtype == np.float32
    err = np.abs(x - ref).max()
    assert err <= rel * np.abs(ref).max(), f"max |Δ| {err:.3g} vs scale {np.abs(ref).max():.3g}"


def _official_timesteps(sched, steps, strength):
    # The official pipeline's get_timesteps (diffusers img2img).
    sched.set_timesteps(steps)
    init = min(int(steps * strength), steps)
    start = max(steps - init, 0)
    return sched.timesteps[start * sched.order:]


def test_default_schedule_is_19_steps_from_900():
    ts = timesteps(contract.DEFAULT_STEPS, contract.DEFAULT_STRENGTH)
    assert ts.dtype == np.int64
    assert ts.tolist() == list(range(900, -1, -50))


def test_alphas_table_matches_the_golden():
    torch = pytest.importorskip("torch")
    sched = _diffusers_scheduler()
    golden = np.load(DATA / "pipeline_case.npz")["alphas_cumprod_all"]
    assert np.array_equal(sched.alphas_cumprod.to(torch.float32).numpy(), golden)


@pytest.mark.parametrize("steps", [5, 20, 50])
@pytest.mark.parametrize("strength", [1.0, 0.99, 0.75, 0.5, 0.3])
def test_matches_diffusers(steps, strength):
    torch = pytest.importorskip("torch")
    sched = _diffusers_scheduler()
    ref_ts = _official_timesteps(sched, steps, strength)
    ours = DDIMSchedule.create(sched.alphas_cumprod.numpy(), steps, strength)
    assert ours.timesteps.tolist() == ref_ts.tolist()

    rng = np.random.default_rng(steps * 100 + int(strength * 100))
    z0 = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    noise = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    ref = sched.add_noise(torch.from_numpy(z0), torch.from_numpy(noise), ref_ts[:1])
    x = add_noise(z0, noise, ours.alpha_start)
    _assert_close(x, ref.numpy())
    ref = ref.clone()
    for i, t in enumerate(ref_ts):
        # A smooth function of x standing in for the model, so errors would compound.
        eps = (np.tanh(x) * 0.9 + 0.1 * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)
        ref_eps = torch.from_numpy(np.tanh(ref.numpy()) * 0.9 + (eps - np.tanh(x) * 0.9))
        ref = sched.step(ref_eps.to(torch.float32), t, ref, eta=0.0).prev_sample
        x = ddim_step(x, eps, ours.alpha_t[i], ours.alpha_prev[i])
        assert x.dtype == np.float32
        _assert_close(x, ref.numpy())


def test_reproduces_the_official_trajectory():
    d = np.load(DATA / "pipeline_case.npz")
    sched = DDIMSchedule.create(d["alphas_cumprod_all"], 20, 0.99)
    assert sched.timesteps.tolist() == d["timesteps"].tolist()
    noise = d["noise_base"] + np.float32(contract.NOISE_OFFSET) * d["noise_offset_draw"]
    x = add_noise(d["latents_scaled"], noise, sched.alpha_start)
    np.testing.assert_allclose(x, d["noisy_latents_init"], rtol=0, atol=1e-6)
    for i in range(len(sched)):
        x = ddim_step(d["latents_per_step"][i], d["eps_cfg_per_step"][i], sched.alpha_t[i], sched.alpha_prev[i])
        scale = np.abs(d["latents_per_step"][i + 1]).max()
        assert np.abs(x - d["latents_per_step"][i + 1]).max() <= 1e-6 * scale


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        timesteps(0)
    with pytest.raises(ValueError):
        timesteps(20, 0.0)
    with pytest.raises(ValueError, match="no denoising step"):
        timesteps(5, 0.1)
    with pytest.raises(ValueError):
        DDIMSchedule.create(np.ones(10, np.float32))
