"""Assignment for 43_mapo: the stable g(u) = u/(e^u − 1) and the reference-free MaPO loss."""

import torch
from alignbook.course.grade import check_close, raises, using

CHAPTER = "43_mapo"
LIBRARY = "alignbook.diffusion.mapo"
STUBS = ["mapo_g", "mapo_loss"]
QUESTIONS = [
    (
        "mapo_g",
        3,
        "hidden_mapo_g",
        "u/(e^u − 1) with g(0) = 1, finite values and gradients for tiny and huge |u|",
    ),
    ("mapo_loss", 2, "hidden_mapo_loss", "err_w − β·logσ(T·margin), gradients, β and snr checks"),
]


def hidden_mapo_g(ns):
    "Values and gradients across scales, including u = 0, |u| < 1e-3 and |u| in the hundreds."
    from alignbook.diffusion.mapo import mapo_g as ref

    fn = ns["mapo_g"]
    u = torch.tensor([-800.0, -50.0, -2.0, -1e-2, -1e-4, 0.0, 1e-6, 1e-4, 0.5, 2.0, 50.0, 800.0])
    x = u.clone().requires_grad_()
    got = fn(x)
    assert torch.isfinite(got).all(), f"mapo_g is not finite at u = {u[~torch.isfinite(got)].tolist()}"
    x2 = u.clone().requires_grad_()
    want = ref(x2)
    check_close(got, want, "mapo_g values", rtol=1e-4)
    (gg,) = torch.autograd.grad(got.sum(), x)
    (gw,) = torch.autograd.grad(want.sum(), x2)
    assert torch.isfinite(gg).all(), (
        f"gradient of mapo_g is not finite at u = {u[~torch.isfinite(gg)].tolist()}"
    )
    check_close(gg, gw, "gradient of mapo_g", rtol=1e-3, atol=1e-5)


def hidden_mapo_loss(ns):
    "Values and gradients for several β and snr (the library's g and margin swapped in); bad β, snr raise."
    import alignbook.diffusion.mapo as lib

    fn = ns["mapo_loss"]
    g = torch.Generator().manual_seed(0)
    with using(ns, mapo_g=lib.mapo_g, mapo_margin=lib.mapo_margin):
        for beta, snr in [(0.1, 0.5), (1.0, 0.5), (0.1, 2.0)]:
            ew = (torch.rand(8, generator=g) * 0.4).requires_grad_()
            el = (torch.rand(8, generator=g) * 0.4).requires_grad_()
            got = fn(ew, el, beta=beta, snr=snr)
            ew2, el2 = ew.detach().requires_grad_(), el.detach().requires_grad_()
            want = lib.mapo_loss(ew2, el2, beta=beta, snr=snr)
            check_close(got, want, f"mapo_loss(beta={beta}, snr={snr})")
            gg = torch.autograd.grad(got.sum(), [ew, el])
            gw = torch.autograd.grad(want.sum(), [ew2, el2])
            check_close(gg[0], gw[0], "gradient wrt err_w")
            check_close(gg[1], gw[1], "gradient wrt err_l")
        z = torch.rand(4)
        raises(lambda: fn(z, z, beta=-1.0), ValueError, "beta=-1", contains="beta")
        raises(lambda: fn(z, z, snr=0.0), ValueError, "snr=0", contains="snr")
