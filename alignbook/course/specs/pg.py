"""Assignment for 31_pg: GRPO's group-relative advantages, the k3 KL estimate and the GRPO loss."""

import torch
from alignbook.course.grade import check_close, raises, using

CHAPTER = "31_pg"
LIBRARY = "alignbook.lm.pg"
STUBS = ["grpo_advantages", "k3_kl", "grpo_loss"]
QUESTIONS = [
    (
        "grpo_advantages",
        3,
        "hidden_grpo_advantages",
        "(r − group mean)/(std + 1e-4), unbiased std, scales, errors",
    ),
    ("k3_kl", 2, "hidden_k3_kl", "k3 = e^d − d − 1 (d = ref − logp, ref detached), ≥ 0, gradients"),
    ("grpo_loss", 3, "hidden_grpo_loss", "clipped surrogate + β·k3, the four normalisations, shapes"),
]


def hidden_grpo_advantages(ns):
    "Random rewards for several group sizes and every scale; bad group sizes raise."
    from alignbook.lm.pg import grpo_advantages as ref

    fn = ns["grpo_advantages"]
    g = torch.Generator().manual_seed(0)
    for G in (2, 4, 8):
        r = torch.randint(0, 3, (4 * G,), generator=g).float() + torch.rand(4 * G, generator=g)
        check_close(fn(r, G), ref(r, G), f"grpo_advantages(group_size={G})")
        for scale in ("batch", "none"):
            check_close(fn(r, G, scale=scale), ref(r, G, scale=scale), f"grpo_advantages(scale={scale!r})")
    r = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    check_close(fn(r, 4), ref(r, 4), "a group whose rewards are all equal (zero advantage, no NaN)")
    raises(lambda: fn(torch.rand(6), 4), ValueError, "6 rewards in groups of 4", contains="group_size")


def hidden_k3_kl(ns):
    "Values (including d near 0 and large |d|), non-negativity and gradients against the library."
    from alignbook.lm.pg import k3_kl as ref

    fn = ns["k3_kl"]
    g = torch.Generator().manual_seed(1)
    logps = (-torch.rand(4, 6, generator=g) * 5).requires_grad_()
    ref_logps = (-torch.rand(4, 6, generator=g) * 5).requires_grad_()
    got = fn(logps, ref_logps)
    lp2, rl2 = logps.detach().requires_grad_(), ref_logps.detach().requires_grad_()
    want = ref(lp2, rl2)
    check_close(got, want, "k3_kl values")
    assert (got >= 0).all(), "k3_kl must be >= 0"
    (gg,) = torch.autograd.grad(got.sum(), logps, retain_graph=True)
    (gw,) = torch.autograd.grad(want.sum(), lp2, retain_graph=True)
    check_close(gg, gw, "gradient of k3_kl wrt logps")
    if got.requires_grad:
        gr = torch.autograd.grad(got.sum(), ref_logps, allow_unused=True)[0]
        assert gr is None or gr.abs().max() == 0, (
            "k3_kl must not send gradient into ref_logps (detach the reference)"
        )
    d = torch.tensor([-3.0, -1e-3, 0.0, 1e-3, 3.0])
    check_close(
        fn(torch.zeros(5), d), ref(torch.zeros(5), d), "k3_kl for d = ref − logp near 0 and far from it"
    )


def hidden_grpo_loss(ns):
    "Every loss_type, with and without old log-probs and a KL term (the library's helpers swapped in)."
    import alignbook.lm.pg as lib

    fn = ns["grpo_loss"]
    g = torch.Generator().manual_seed(2)
    B, T = 6, 5
    logps = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(B, T, generator=g)
    refl = logps.detach() + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = (torch.arange(T)[None] < torch.tensor([5, 1, 3, 5, 2, 4])[:, None]).float()
    with using(
        ns, k3_kl=lib.k3_kl, grpo_per_token_loss=lib.grpo_per_token_loss, ppo_clip_loss=lib.ppo_clip_loss
    ):
        for lt in lib.GRPO_LOSS_TYPES:
            for kw in (dict(old_logps=None), dict(old_logps=old, beta=0.04, ref_logps=refl)):
                got = fn(logps, advantages=adv, mask=mask, loss_type=lt, **kw)
                lp2 = logps.detach().requires_grad_()
                want = lib.grpo_loss(lp2, advantages=adv, mask=mask, loss_type=lt, **kw)
                check_close(got, want, f"grpo_loss(loss_type={lt!r}, {sorted(kw)})")
                (gg,) = torch.autograd.grad(got, logps)
                (gw,) = torch.autograd.grad(want, lp2)
                check_close(gg, gw, f"gradient of grpo_loss(loss_type={lt!r})")
        raises(
            lambda: fn(logps, None, adv, mask[:, :3]),
            ValueError,
            "a mask of the wrong shape",
            contains="mask",
        )
