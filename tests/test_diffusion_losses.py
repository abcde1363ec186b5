"Diffusion-DPO, MaPO, Diffusion-KTO: invariants, parity with the published formulas, bad input."

import math
import pytest, torch, torch.nn.functional as F
from alignbook.diffusion.dpo import (
    diffusion_dpo_loss,
    diffusion_dpo_loss_sdxl,
    diffusion_dpo_logits,
    implicit_accuracy,
    check_diffusion_dpo,
)
from alignbook.diffusion.mapo import mapo_g, mapo_margin, mapo_loss, check_mapo_g
from alignbook.diffusion.kto import diffusion_kto_loss, diffusion_kto_reference_point, check_diffusion_kto


def errs(n=16, seed=0, k=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) * 0.5 + 0.01 for _ in range(k)]


# ---------------- Diffusion-DPO ----------------
def test_dpo_ln2_when_policy_is_reference():
    mw, ml, _, _ = errs()
    torch.testing.assert_close(
        diffusion_dpo_loss(mw, ml, mw.clone(), ml.clone()), torch.full((16,), math.log(2))
    )


@pytest.mark.parametrize("beta", [1.0, 2500.0, 5000.0])
def test_dpo_two_published_forms_agree(beta):
    mw, ml, rw, rl = errs(seed=1)
    torch.testing.assert_close(
        diffusion_dpo_loss(mw, ml, rw, rl, beta), diffusion_dpo_loss_sdxl(mw, ml, rw, rl, 2 * beta)
    )


def test_dpo_independent_formula():
    mw, ml, rw, rl = [e * 1e-3 for e in errs(seed=2)]  # LoRA-sized differences: the sigmoid's working range
    want = -torch.log(torch.sigmoid(2500.0 * ((rw - rl) - (mw - ml))).double())
    torch.testing.assert_close(diffusion_dpo_loss(mw.double(), ml.double(), rw.double(), rl.double()), want)


def test_dpo_mean_of_logsigmoids_not_logsigmoid_of_mean():
    z = torch.zeros(4)
    lg = torch.tensor([3e-3, -3e-3, 1e-3, -2e-3])
    loss = diffusion_dpo_loss(-lg, z, z, z).mean()  # logits = ref_diff - model_diff = lg
    torch.testing.assert_close(loss, -F.logsigmoid(2500 * lg).mean())
    assert loss > -F.logsigmoid(2500 * lg.mean()) + 0.1


def test_dpo_swap_flips_logits_and_loss_is_per_example():
    mw, ml, rw, rl = errs(seed=3)
    torch.testing.assert_close(diffusion_dpo_logits(ml, mw, rl, rw), -diffusion_dpo_logits(mw, ml, rw, rl))
    assert diffusion_dpo_loss(mw, ml, rw, rl).shape == (16,)


def test_dpo_reference_gets_no_gradient_and_policy_direction():
    mw, ml, rw, rl = [(e * 1e-3).requires_grad_() for e in errs(seed=4)]
    diffusion_dpo_loss(mw, ml, rw, rl).sum().backward()
    assert rw.grad is None and rl.grad is None
    assert (mw.grad > 0).all() and (ml.grad < 0).all()  # descent lowers chosen error, raises rejected


def test_implicit_accuracy_counts_ties_half():
    torch.testing.assert_close(implicit_accuracy(torch.tensor([1.0, -1.0, 0.0, 2.0])), torch.tensor(0.625))


def test_dpo_bad_input():
    mw, ml, rw, rl = errs()
    with pytest.raises(ValueError, match="share one shape"):
        diffusion_dpo_loss(mw, ml[:3], rw, rl)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        diffusion_dpo_loss(mw[:, None], ml[:, None], rw[:, None], rl[:, None])
    with pytest.raises(ValueError, match="beta must be > 0"):
        diffusion_dpo_loss(mw, ml, rw, rl, beta=-1)
    with pytest.raises(TypeError, match="must be a tensor"):
        diffusion_dpo_loss([0.1], ml, rw, rl)


def test_check_helper_rejects_wrong_sign():
    assert check_diffusion_dpo(diffusion_dpo_loss) is None
    with pytest.raises(AssertionError):
        check_diffusion_dpo(lambda a, b, c, d, beta: -F.logsigmoid(beta * ((a - b) - (c - d))))


# ---------------- MaPO ----------------
def test_mapo_g_values_and_gradients_near_zero():
    u = torch.tensor(
        [0.0, 1e-8, 1e-5, 9.9e-4, 1.1e-3, 0.1, 1.0, 10.0, 200.0, 1000.0],
        dtype=torch.float64,
        requires_grad=True,
    )
    g = mapo_g(u)
    ref = torch.where(u == 0, torch.ones_like(u), u / torch.expm1(u))
    torch.testing.assert_close(g, ref.detach(), rtol=1e-9, atol=1e-12)
    g.sum().backward()
    assert torch.isfinite(u.grad).all()
    assert abs(u.grad[0].item() + 0.5) < 1e-9
    assert (g[1:] <= g[:-1]).all() and (g >= 0).all() and (g <= 1).all()


def test_mapo_g_float32_no_nan():
    u = torch.tensor([0.0, 1e-7, 5e-4, 3.0, 89.0, 1e4], requires_grad=True)
    g = mapo_g(u)
    g.sum().backward()
    assert torch.isfinite(g).all() and torch.isfinite(u.grad).all()


def test_mapo_matches_official_inline_formula():
    lw, ll = errs(32, seed=5, k=2)
    inline = (0.5 * lw) / (torch.exp(0.5 * lw) - 1) - (0.5 * ll) / (torch.exp(0.5 * ll) - 1)
    official = lw.mean() - (0.1 * F.logsigmoid(inline * 1000)).mean()
    torch.testing.assert_close(mapo_loss(lw, ll).mean(), official)
    torch.testing.assert_close(
        mapo_loss(lw, ll, beta=0.3, snr=1.5, num_timesteps=10),
        lw - 0.3 * F.logsigmoid(10 * (mapo_g(1.5 * lw) - mapo_g(1.5 * ll))),
    )


def test_mapo_margin_gradient_lowers_chosen_relative_to_rejected():
    lw, ll = [e.clone().requires_grad_() for e in errs(16, seed=6, k=2)]
    (mapo_loss(lw, ll) - lw).sum().backward()  # margin term alone
    assert (lw.grad > 0).all() and (ll.grad < 0).all()
    # and one descent step on the full loss increases the margin
    lw2, ll2 = [e.clone().requires_grad_() for e in errs(16, seed=6, k=2)]
    mapo_loss(lw2, ll2).sum().backward()
    with torch.no_grad():
        before = mapo_margin(lw2, ll2)
        after = mapo_margin(lw2 - 1e-3 * lw2.grad, ll2 - 1e-3 * ll2.grad)
    assert (after >= before).all()


def test_mapo_equal_errors():
    e = torch.tensor([0.2, 0.5])
    torch.testing.assert_close(mapo_loss(e, e), e + 0.1 * math.log(2))
    torch.testing.assert_close(mapo_margin(e, e), torch.zeros(2))


def test_mapo_bad_input():
    lw, ll = errs(k=2)
    with pytest.raises(ValueError, match="share one shape"):
        mapo_loss(lw, ll[:2])
    with pytest.raises(ValueError, match="snr must be > 0"):
        mapo_loss(lw, ll, snr=0.0)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        mapo_loss(lw, ll, beta=-0.1)
    assert check_mapo_g(mapo_g) is None
    with pytest.raises(AssertionError):
        check_mapo_g(lambda u: u / torch.expm1(u))  # NaN at 0


# ---------------- Diffusion-KTO ----------------
def test_kto_half_at_init_and_weights():
    me, _ = errs(8, k=2)
    lab = torch.tensor([1, 0] * 4)
    torch.testing.assert_close(diffusion_kto_loss(me, me, lab), torch.full((8,), 0.5))
    torch.testing.assert_close(
        diffusion_kto_loss(me, me, lab, lambda_d=3.0, lambda_u=0.5), torch.tensor([1.5, 0.25] * 4)
    )


def test_kto_matches_official_formula():
    me, re = errs(12, seed=7, k=2)
    lab = (torch.arange(12) % 3 == 0).long()
    g = re - me
    kl = g.mean().clamp(min=0)
    s = 2 * lab.float() - 1
    want = (1.5 * lab + 0.7 * (1 - lab)) * (1 - torch.sigmoid(s * 50.0 * (g - kl)))
    torch.testing.assert_close(diffusion_kto_loss(me, re, lab, beta=50.0, lambda_d=1.5, lambda_u=0.7), want)


def test_kto_reference_point_clamped_and_detached():
    me, re = errs(8, seed=8, k=2)
    assert diffusion_kto_reference_point(re + 1.0, re).item() == 0.0  # policy worse → clamp to 0
    z = diffusion_kto_reference_point(me, re - 1.0)
    assert z.item() == 0.0
    zpos = diffusion_kto_reference_point(me, re + 1.0)
    assert zpos.item() > 0 and not zpos.requires_grad
    lab = torch.tensor([1, 0] * 4)
    a, b = me.clone().requires_grad_(), me.clone().requires_grad_()
    diffusion_kto_loss(a, re + 1.0, lab, beta=2.0).sum().backward()
    diffusion_kto_loss(b, re + 1.0, lab, beta=2.0, ref_point=zpos.item()).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    r = re.clone().requires_grad_()
    diffusion_kto_loss(me.clone().requires_grad_(), r, lab).sum().backward()
    assert r.grad is None
    assert (a.grad[lab == 1] > 0).all() and (a.grad[lab == 0] < 0).all()


def test_kto_bad_input():
    me, re = errs(8, k=2)
    with pytest.raises(ValueError, match="one bool/0-1 label per example"):
        diffusion_kto_loss(me, re, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="0/1 or bool"):
        diffusion_kto_loss(me, re, torch.full((8,), 0.5))
    with pytest.raises(ValueError, match="beta must be > 0"):
        diffusion_kto_loss(me, re, torch.ones(8), beta=0)
    assert check_diffusion_kto(lambda m, r, d, b: diffusion_kto_loss(m, r, d, b)) is None
    with pytest.raises(AssertionError, match="detached"):
        check_diffusion_kto(
            lambda m, r, d, b: (
                1 - torch.sigmoid((2 * d.float() - 1) * b * ((r - m) - (r - m).mean().clamp(min=0)))
            )
        )
