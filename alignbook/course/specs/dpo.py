"""Assignment for 22_dpo: the DPO loss, its TRL variants and its input checks."""

import torch
from alignbook.course.grade import check_close, raises

CHAPTER = "22_dpo"
LIBRARY = "alignbook.lm.dpo"
STUBS = ["dpo_loss"]
QUESTIONS = [
    (
        "dpo_sigmoid",
        3,
        "hidden_dpo_sigmoid",
        "sigmoid loss, detached implicit rewards, gradients, ln 2 at init",
    ),
    ("dpo_variants", 3, "hidden_dpo_variants", "hinge, ipo (length-averaged), robust and label smoothing"),
    ("dpo_bad_input", 1, "hidden_dpo_bad_input", "clear errors for shapes, beta, loss_type, label_smoothing"),
]


def _logps(seed, n=12):
    g = torch.Generator().manual_seed(seed)
    return [(-torch.rand(n, generator=g) * 40).requires_grad_() for _ in range(4)]


def _compare(fn, ref, what, **kw):
    x = _logps(kw.pop("seed", 0))
    got = fn(*x, **kw)
    x2 = [t.detach().requires_grad_() for t in x]
    want = ref(*x2, **kw)
    for i, name in enumerate(["losses", "chosen_rewards", "rejected_rewards"]):
        check_close(got[i], want[i], f"{what}: {name}")
    gg = torch.autograd.grad(got[0].sum(), x[:2])
    gw = torch.autograd.grad(want[0].sum(), x2[:2])
    check_close(gg[0], gw[0], f"{what}: gradient wrt chosen_logps")
    check_close(gg[1], gw[1], f"{what}: gradient wrt rejected_logps")
    assert not got[1].requires_grad and not got[2].requires_grad, (
        f"{what}: the implicit rewards must be detached"
    )


def hidden_dpo_sigmoid(ns):
    "loss_type='sigmoid' for several beta: losses, rewards, gradients; ln 2 when policy == reference."
    import math
    from alignbook.lm.dpo import dpo_loss as ref

    fn = ns["dpo_loss"]
    for seed, beta in [(0, 0.1), (1, 0.5), (2, 0.05)]:
        _compare(fn, ref, f"sigmoid, beta={beta}", seed=seed, beta=beta)
    w, lo = -torch.rand(6) * 20, -torch.rand(6) * 20
    check_close(fn(w, lo, w, lo, beta=0.3)[0], torch.full((6,), math.log(2)), "loss at policy == reference")


def hidden_dpo_variants(ns):
    "hinge, ipo (with lengths), robust and sigmoid with label smoothing against the library."
    from alignbook.lm.dpo import dpo_loss as ref

    fn = ns["dpo_loss"]
    g = torch.Generator().manual_seed(5)
    lens = dict(
        chosen_lengths=torch.randint(1, 30, (12,), generator=g).float(),
        rejected_lengths=torch.randint(1, 30, (12,), generator=g).float(),
    )
    _compare(fn, ref, "hinge", seed=3, beta=0.1, loss_type="hinge")
    _compare(fn, ref, "ipo", seed=4, beta=0.1, loss_type="ipo", **lens)
    _compare(fn, ref, "robust", seed=5, beta=0.2, loss_type="robust", label_smoothing=0.2)
    _compare(
        fn, ref, "sigmoid with label_smoothing", seed=6, beta=0.2, loss_type="sigmoid", label_smoothing=0.1
    )


def hidden_dpo_bad_input(ns):
    "Each bad argument raises a ValueError (or TypeError) that names it."
    fn = ns["dpo_loss"]
    z = torch.zeros(4)
    raises(
        lambda: fn(z, z, z, torch.zeros(5)), ValueError, "mismatched shapes", contains="ref_rejected_logps"
    )
    raises(lambda: fn(z, z, z, z, beta=0), ValueError, "beta=0", contains="beta")
    raises(lambda: fn(z, z, z, z, loss_type="kto"), ValueError, "an unknown loss_type", contains="loss_type")
    raises(
        lambda: fn(z, z, z, z, label_smoothing=0.5),
        ValueError,
        "label_smoothing=0.5",
        contains="label_smoothing",
    )
    raises(lambda: fn(z, z, z, z, loss_type="ipo"), ValueError, "ipo without lengths", contains="lengths")
