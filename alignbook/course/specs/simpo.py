"""Assignment for 24_simpo: the reference-free, length-normalised SimPO loss."""

import torch
from alignbook.course.grade import check_close, raises

CHAPTER = "24_simpo"
LIBRARY = "alignbook.lm.simpo"
STUBS = ["simpo_loss"]
QUESTIONS = [
    ("simpo_loss", 3, "hidden_simpo_loss", "−logσ(β·(avg_w − avg_l) − γ), detached rewards, gradients"),
    ("simpo_bad_input", 1, "hidden_simpo_bad_input", "clear errors for shapes, beta and gamma"),
]


def hidden_simpo_loss(ns):
    "Values, rewards and gradients against the library for several β, γ."
    from alignbook.lm.simpo import simpo_loss as ref

    fn = ns["simpo_loss"]
    g = torch.Generator().manual_seed(0)
    for beta, gamma in [(2.0, 0.5), (10.0, 1.6), (2.5, 0.0)]:
        w = (-torch.rand(9, generator=g) * 3).requires_grad_()
        lo = (-torch.rand(9, generator=g) * 3).requires_grad_()
        got = fn(w, lo, beta=beta, gamma=gamma)
        w2, l2 = w.detach().requires_grad_(), lo.detach().requires_grad_()
        want = ref(w2, l2, beta=beta, gamma=gamma)
        for i, name in enumerate(["losses", "chosen_rewards", "rejected_rewards"]):
            check_close(got[i], want[i], f"simpo_loss(beta={beta}, gamma={gamma}): {name}")
        assert not got[1].requires_grad and not got[2].requires_grad, "the SimPO rewards must be detached"
        gg = torch.autograd.grad(got[0].sum(), [w, lo])
        gw = torch.autograd.grad(want[0].sum(), [w2, l2])
        check_close(gg[0], gw[0], "gradient wrt chosen_avg_logps")
        check_close(gg[1], gw[1], "gradient wrt rejected_avg_logps")


def hidden_simpo_bad_input(ns):
    "Each bad argument raises a ValueError that names it."
    fn = ns["simpo_loss"]
    z = torch.zeros(4)
    raises(lambda: fn(z, torch.zeros(5)), ValueError, "mismatched shapes", contains="rejected_avg_logps")
    raises(lambda: fn(z, z, beta=0.0), ValueError, "beta=0", contains="beta")
    raises(lambda: fn(z, z, gamma=float("nan")), ValueError, "gamma=nan", contains="gamma")
