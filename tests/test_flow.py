"Flow-matching core: conventions, losses, ODE/SDE samplers, model dispatch, the shipped digits flow."

import math
import pytest, torch
from diffusers import UNet2DModel, UNet2DConditionModel
from alignbook.diffusion.flow import (
    interpolate,
    flow_target,
    to_meta_convention,
    from_meta_convention,
    velocity,
    flow_errors,
    flow_loss,
    sample_sigmas,
    sigma_schedule,
    sample_ode,
    sde_step,
    sample_sde,
    GaussianVelocity,
    MLPVelocity,
    moons,
    gaussian_mixture,
    fit_flow_2d,
    mmd_rbf,
    digits_unet,
    load_digits_images,
    build_digits_flow,
    toy_digits_flow,
    digits_flow_path,
    check_flow_errors,
)

torch.set_num_threads(1)
MU, S = torch.tensor([2.0, -1.0]), 0.5


def test_interpolant_endpoints_and_meta_mapping():
    g = torch.Generator().manual_seed(0)
    x0, e, s = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), torch.rand(5, generator=g)
    torch.testing.assert_close(interpolate(x0, e, torch.zeros(5)), x0)
    torch.testing.assert_close(interpolate(x0, e, torch.ones(5)), e)
    t, u = to_meta_convention(s, flow_target(x0, e))
    torch.testing.assert_close(interpolate(x0, e, s), (1 - t)[:, None] * e + t[:, None] * x0)
    torch.testing.assert_close(u, x0 - e)
    s2, v2 = from_meta_convention(t, u)
    torch.testing.assert_close(s2, s)
    torch.testing.assert_close(v2, e - x0)
    # d x_sigma / d sigma equals the target (finite difference)
    h = 1e-3
    torch.testing.assert_close(
        (interpolate(x0, e, s + h) - interpolate(x0, e, s)) / h, flow_target(x0, e), atol=1e-3, rtol=1e-3
    )


def test_flow_errors_oracle_zero_and_shapes():
    g = torch.Generator().manual_seed(1)
    x0, e, s = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g), torch.rand(4, generator=g)
    assert torch.allclose(flow_errors(lambda x, sg, c: e - x0, x0, e, s), torch.zeros(4))
    torch.testing.assert_close(
        flow_errors(lambda x, sg, c: torch.zeros_like(x), x0, e, s), (e - x0).pow(2).mean(1)
    )
    with pytest.raises(ValueError, match="sigma must have shape"):
        flow_errors(lambda x, sg, c: x, x0, e, s[:2])
    with pytest.raises(ValueError, match="noise"):
        flow_errors(lambda x, sg, c: x, x0, e[:, :1], s)
    assert flow_loss(MLPVelocity(2), x0).shape == (4,)
    assert check_flow_errors(lambda m, a, b, c: flow_errors(m, a, b, c)) is None
    with pytest.raises(AssertionError):
        check_flow_errors(lambda m, a, b, c: flow_errors(m, a, b, 1 - c))


def test_sigmas_and_schedule():
    s = sample_sigmas(1000, torch.Generator().manual_seed(0))
    assert ((s > 0) & (s < 1)).all()
    ln = sample_sigmas(1000, torch.Generator().manual_seed(0), kind="logit_normal")
    assert abs(ln.mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="unknown kind"):
        sample_sigmas(3, kind="cosine")
    for shift in (1.0, 3.0):
        sch = sigma_schedule(10, shift)
        assert sch[0] == 1 and sch[-1] == 0 and (sch[1:] < sch[:-1]).all()
    assert (sigma_schedule(10, 3.0)[1:-1] > sigma_schedule(10, 1.0)[1:-1]).all()
    with pytest.raises(ValueError, match="steps must be"):
        sigma_schedule(0)


def _gauss_err(x):
    return (x.mean(0) - MU).abs().max().item() + (x.std(0) - S).abs().max().item()


def test_ode_samplers_reach_the_gaussian_and_midpoint_beats_euler():
    gv, z = GaussianVelocity(MU, S), torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    e4, m4 = _gauss_err(sample_ode(gv, z, steps=4)), _gauss_err(sample_ode(gv, z, steps=4, method="midpoint"))
    assert m4 < e4
    assert _gauss_err(sample_ode(gv, z, steps=64, method="midpoint")) < 0.03
    assert _gauss_err(sample_ode(gv, z, steps=8)) < _gauss_err(sample_ode(gv, z, steps=2))
    x, traj = sample_ode(gv, z[:10], steps=5, return_traj=True)
    assert traj.shape == (6, 10, 2)
    torch.testing.assert_close(traj[0], z[:10])
    torch.testing.assert_close(traj[-1], x)
    with pytest.raises(ValueError, match="method"):
        sample_ode(gv, z, method="rk4")


def test_sde_keeps_the_marginals_and_logprob_is_gaussian():
    gv, z = GaussianVelocity(MU, S), torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    x, traj, lps = sample_sde(gv, z, steps=100, eta=0.7, generator=torch.Generator().manual_seed(1))
    assert _gauss_err(x) < 0.08 and traj.shape == (101, 20000, 2) and lps.shape == (99, 20000)
    # an intermediate marginal too: x_sigma ~ N((1-σ)μ, (1-σ)²s² + σ²)
    s = sigma_schedule(100)[50].item()
    xm = traj[50]
    torch.testing.assert_close(
        xm.std(0), torch.full((2,), math.sqrt((1 - s) ** 2 * S**2 + s**2)), atol=0.03, rtol=0
    )
    xs = z[:7]
    v = gv(xs, torch.full((7,), 0.6))
    xn, lp, mean, std = sde_step(v, xs, 0.6, 0.55, reduce="sum", generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(lp, torch.distributions.Normal(mean, std).log_prob(xn).sum(1))
    _, lpm, _, _ = sde_step(v, xs, 0.6, 0.55, x_next=xn, reduce="mean")
    torch.testing.assert_close(lpm, lp / 2)
    # eta -> 0 gives the Euler step
    x0, _, m0, _ = sde_step(v, xs, 0.6, 0.55, eta=1e-8)
    torch.testing.assert_close(m0, xs + (0.55 - 0.6) * v, atol=1e-6, rtol=0)
    # the sigma = 1 step is finite
    _, lp1, _, std1 = sde_step(gv(xs, torch.ones(7)), xs, 1.0, 0.9)
    assert math.isfinite(std1) and torch.isfinite(lp1).all()
    with pytest.raises(ValueError, match="sigma_next < sigma"):
        sde_step(v, xs, 0.5, 0.6)
    with pytest.raises(ValueError, match="reduce"):
        sde_step(v, xs, 0.6, 0.5, reduce="max")


def test_velocity_dispatch_unets():
    u = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=10,
    )
    x = torch.randn(3, 1, 8, 8)
    out = velocity(u, x, torch.rand(3), torch.tensor([1, 2, 3]))
    assert out.shape == x.shape
    assert not torch.allclose(
        out, velocity(u, x, 0.3, torch.tensor([4, 5, 6]))
    )  # scalar sigma broadcast; class matters
    uc = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    xc = torch.randn(2, 4, 8, 8)
    assert velocity(uc, xc, torch.rand(2), torch.randn(2, 5, 12)).shape == xc.shape
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        velocity(uc, xc, torch.rand(2))


def test_fit_flow_2d_learns_moons():
    data = moons(2000, seed=0)
    model, losses = fit_flow_2d(data, steps=300, progress=False)
    assert sum(losses[-30:]) / 30 < sum(losses[:30]) / 30
    z = torch.randn(800, 2, generator=torch.Generator().manual_seed(0))
    assert mmd_rbf(sample_ode(model, z, steps=20, method="midpoint"), data[:800]) < mmd_rbf(z, data[:800])
    assert gaussian_mixture(100).shape == (100, 2)


def test_digits_data_and_unet():
    x, y = load_digits_images()
    assert x.shape == (1797, 1, 8, 8) and x.min() >= -1 and x.max() <= 1 and y.max() == 9
    x16, _ = load_digits_images(16)
    assert x16.shape[-1] == 16
    assert digits_unet().config.num_class_embeds == 10


def test_build_digits_flow_is_deterministic(tmp_path):
    a = build_digits_flow(tmp_path / "a", steps=3, batch_size=16, progress=False)
    b = build_digits_flow(tmp_path / "b", steps=3, batch_size=16, progress=False)
    assert (a / "diffusion_pytorch_model.safetensors").read_bytes() == (
        b / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    m = toy_digits_flow(a)
    assert isinstance(m, UNet2DModel) and not m.training
    with pytest.raises(FileNotFoundError, match="build_digits_flow"):
        toy_digits_flow(tmp_path / "missing")


@pytest.mark.skipif(not (digits_flow_path() / "config.json").exists(), reason="shipped digits flow not built")
def test_shipped_digits_flow_is_small_and_beats_untrained():
    p = digits_flow_path()
    assert sum(f.stat().st_size for f in p.iterdir()) < 5e6
    flow, x = toy_digits_flow(), load_digits_images()[0]
    g = torch.Generator().manual_seed(0)
    x0, e, s, c = (
        x[:256],
        torch.randn(256, 1, 8, 8, generator=g),
        torch.rand(256, generator=g),
        load_digits_images()[1][:256],
    )
    with torch.no_grad():
        assert flow_errors(flow, x0, e, s, c).mean() < 0.6 * flow_errors(digits_unet(), x0, e, s, c).mean()
