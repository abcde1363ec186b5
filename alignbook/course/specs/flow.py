"""Assignment for 40_flow: the interpolation path, its velocity target and the Euler/midpoint ODE sampler."""

import torch
from alignbook.course.grade import check_close, raises, using

CHAPTER = "40_flow"
LIBRARY = "alignbook.diffusion.flow"
STUBS = ["interpolate", "flow_target", "sample_ode"]
QUESTIONS = [
    ("interpolate", 2, "hidden_interpolate", "x_σ = (1−σ)·x0 + σ·ε, per-example σ broadcast over any shape"),
    ("flow_target", 1, "hidden_flow_target", "the velocity target ε − x0 (diffusers' sign convention)"),
    (
        "sample_ode",
        3,
        "hidden_sample_ode",
        "Euler and midpoint from σ=1 to σ=0, shifted schedules, trajectories",
    ),
]


def hidden_interpolate(ns):
    "Shapes (B, D) and (B, C, H, W), endpoints σ=0 and σ=1, random σ."
    from alignbook.diffusion.flow import interpolate as ref

    fn = ns["interpolate"]
    g = torch.Generator().manual_seed(0)
    for shape in ((6, 2), (3, 1, 4, 4)):
        x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        sigma = torch.rand(shape[0], generator=g)
        check_close(fn(x0, eps, sigma), ref(x0, eps, sigma), f"interpolate on shape {shape}")
        check_close(fn(x0, eps, torch.zeros(shape[0])), x0, "interpolate at σ=0 (must be the data)")
        check_close(fn(x0, eps, torch.ones(shape[0])), eps, "interpolate at σ=1 (must be the noise)")


def hidden_flow_target(ns):
    "The target equals d x_σ / dσ (checked by finite differences of the library's path)."
    from alignbook.diffusion.flow import flow_target as ref, interpolate

    fn = ns["flow_target"]
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    check_close(fn(x0, eps), ref(x0, eps), "flow_target")
    s = torch.full((5,), 0.3)
    fd = (interpolate(x0, eps, s + 1e-3) - interpolate(x0, eps, s - 1e-3)) / 2e-3
    check_close(fn(x0, eps), fd, "flow_target vs d x_σ/dσ", atol=1e-3)


def hidden_sample_ode(ns):
    "Euler and midpoint, shift 1 and 3, with and without the trajectory, on the exact Gaussian field."
    import alignbook.diffusion.flow as lib

    fn = ns["sample_ode"]
    model = lib.GaussianVelocity(torch.tensor([2.0, -1.0]), 0.5)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    with using(ns, velocity=lib.velocity, sigma_schedule=lib.sigma_schedule):
        for method in ("euler", "midpoint"):
            for steps, shift in ((1, 1.0), (7, 1.0), (5, 3.0)):
                got = fn(model, z, steps=steps, method=method, shift=shift)
                want = lib.sample_ode(model, z, steps=steps, method=method, shift=shift)
                check_close(got, want, f"sample_ode(steps={steps}, method={method!r}, shift={shift})")
        x, traj = fn(model, z, steps=4, return_traj=True)
        want, wtraj = lib.sample_ode(model, z, steps=4, return_traj=True)
        assert tuple(traj.shape) == (5, 64, 2), (
            f"trajectory shape must be (steps+1, B, D), got {tuple(traj.shape)}"
        )
        check_close(traj, wtraj, "sample_ode trajectory")
        raises(lambda: fn(model, z, method="rk4"), ValueError, "method='rk4'", contains="method")
