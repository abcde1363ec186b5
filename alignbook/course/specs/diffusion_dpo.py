"""Assignment for 42_diffusion_dpo: the Diffusion-DPO logits (reference detached) and loss."""

import torch
from alignbook.course.grade import check_close, raises, using

CHAPTER = "42_diffusion_dpo"
LIBRARY = "alignbook.diffusion.dpo"
STUBS = ["diffusion_dpo_logits", "diffusion_dpo_loss"]
QUESTIONS = [
    ("diffusion_dpo_logits", 3, "hidden_logits", "ref_diff − model_diff, reference detached, shape checks"),
    ("diffusion_dpo_loss", 2, "hidden_loss", "−logσ(β·logits), β > 0"),
]


def _errs(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(10, generator=g) * 0.2).requires_grad_() for _ in range(4)]


def hidden_logits(ns):
    "Values and gradients: the policy's errors get gradient, the reference's none; bad shapes raise."
    from alignbook.diffusion.dpo import diffusion_dpo_logits as ref

    fn = ns["diffusion_dpo_logits"]
    for seed in range(3):
        e = _errs(seed)
        got = fn(*e)
        e2 = [t.detach().requires_grad_() for t in e]
        want = ref(*e2)
        check_close(got, want, "diffusion_dpo_logits values")
        gg = torch.autograd.grad(got.sum(), e, allow_unused=True)
        gw = torch.autograd.grad(want.sum(), e2, allow_unused=True)
        for name, a, b in zip(["model_err_w", "model_err_l", "ref_err_w", "ref_err_l"], gg, gw):
            a = torch.zeros(10) if a is None else a
            b = torch.zeros(10) if b is None else b
            check_close(a, b, f"gradient wrt {name} (is the reference detached?)")
    z = torch.zeros(4)
    raises(lambda: fn(z, z, z, torch.zeros(4, 3)), ValueError, "per-pixel errors (B, D) instead of (B,)")


def hidden_loss(ns):
    "Loss values and gradients for several β (the library's logits swapped in); β <= 0 raises."
    import alignbook.diffusion.dpo as lib

    fn = ns["diffusion_dpo_loss"]
    with using(ns, diffusion_dpo_logits=lib.diffusion_dpo_logits):
        for seed, beta in [(0, 2500.0), (1, 500.0), (2, 5000.0)]:
            e = _errs(seed)
            got = fn(*e, beta=beta)
            e2 = [t.detach().requires_grad_() for t in e]
            want = lib.diffusion_dpo_loss(*e2, beta=beta)
            check_close(got, want, f"diffusion_dpo_loss(beta={beta})")
            gg = torch.autograd.grad(got.sum(), e[:2])
            gw = torch.autograd.grad(want.sum(), e2[:2])
            check_close(gg[0], gw[0], "gradient wrt model_err_w")
            check_close(gg[1], gw[1], "gradient wrt model_err_l")
        z = torch.zeros(4)
        raises(lambda: fn(z, z, z, z, beta=0.0), ValueError, "beta=0", contains="beta")
