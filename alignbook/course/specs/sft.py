"""Assignment for 10_sft: the SFT loss and its Dynamic Fine-Tuning variant."""

import torch
from alignbook.course.grade import check_close, raises

CHAPTER = "10_sft"
LIBRARY = "alignbook.lm.sft"
STUBS = ["sft_loss"]
QUESTIONS = [
    ("sft_loss", 3, "hidden_sft_loss", "mean NLL over completion tokens, per example; shape; bad input"),
    ("sft_loss_dft", 2, "hidden_sft_loss_dft", "dft=True: tokens weighted by the stop-gradient probability"),
]


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(5, 7, generator=g) * 4).requires_grad_()
    mask = (torch.rand(5, 7, generator=g) > 0.4).long()
    mask[:, 0] = 1
    return lp, mask


def hidden_sft_loss(ns):
    "Values and gradients against the library on random inputs, the (B,) shape, the mismatched-shape error."
    from alignbook.lm.sft import sft_loss as ref

    fn = ns["sft_loss"]
    for seed in range(3):
        lp, mask = _inputs(seed)
        got, want = fn(lp, mask), ref(lp.detach().requires_grad_(), mask)
        assert got.shape == (5,), (
            f"sft_loss must return one loss per example, shape (5,), got {tuple(got.shape)}"
        )
        check_close(got, want, "sft_loss values")
        (gg,) = torch.autograd.grad(got.sum(), lp)
        lp2 = lp.detach().requires_grad_()
        (gw,) = torch.autograd.grad(ref(lp2, mask).sum(), lp2)
        check_close(gg, gw, "gradient of sft_loss")
    lp, mask = _inputs(0)
    raises(lambda: fn(lp, mask[:, :3]), ValueError, "sft_loss with token_logps and mask of different shapes")


def hidden_sft_loss_dft(ns):
    "dft=True: values and gradients (sg(p) is a constant weight) against the library."
    from alignbook.lm.sft import sft_loss as ref

    fn = ns["sft_loss"]
    for seed in range(3):
        lp, mask = _inputs(seed + 10)
        got = fn(lp, mask, dft=True)
        lp2 = lp.detach().requires_grad_()
        want = ref(lp2, mask, dft=True)
        check_close(got, want, "sft_loss(dft=True) values")
        (gg,) = torch.autograd.grad(got.sum(), lp)
        (gw,) = torch.autograd.grad(want.sum(), lp2)
        check_close(gg, gw, "gradient of sft_loss(dft=True) (is the probability weight detached?)")
