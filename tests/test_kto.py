"Tests for alignbook.lm.kto: TRL's formula (z0 clamped, detached, rotated pairs), 0.5 at init, bad input."

import pytest, torch, warnings
from alignbook.lm.kto import kto_loss, kto_reference_point, kl_pairs, kto_balance


def trl_kto(lp, rlp, lab, kl, klr, beta, wd, wu):
    "TRL 1.16 KTOTrainer formula (objectives.md §4), per example in the original order."
    z0 = (kl - klr).mean().detach().clamp(min=0)
    r = lp - rlp
    return torch.where(
        lab, wd * (1 - torch.sigmoid(beta * (r - z0))), wu * (1 - torch.sigmoid(beta * (z0 - r)))
    )


@pytest.mark.parametrize("beta,wd,wu", [(0.1, 1.0, 1.0), (0.5, 1.33, 1.0), (0.01, 1.0, 0.7)])
def test_parity(beta, wd, wu):
    g = torch.Generator().manual_seed(0)
    lp, rlp = -torch.rand(32, generator=g) * 30, -torch.rand(32, generator=g) * 30
    lab = torch.rand(32, generator=g) > 0.4
    kl, klr = lp[kl_pairs(32)] + torch.randn(32, generator=g), rlp[kl_pairs(32)]
    got, rew, z0 = kto_loss(lp, rlp, lab, kl, klr, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    torch.testing.assert_close(got, trl_kto(lp, rlp, lab, kl, klr, beta, wd, wu))
    torch.testing.assert_close(rew, beta * (lp - rlp))
    # TRL concatenates desirable then undesirable losses; the batch mean is the same
    torch.testing.assert_close(got.mean(), torch.cat([got[lab], got[~lab]]).mean())


def test_init_and_reference_point():
    lp = -torch.rand(6) * 10
    lab = torch.tensor([True, False] * 3)
    loss, _, z0 = kto_loss(lp, lp, lab, lp[kl_pairs(6)], lp[kl_pairs(6)])
    torch.testing.assert_close(loss, torch.full((6,), 0.5))
    assert z0.item() == 0
    assert kto_reference_point(torch.tensor([-1.0, -2.0]), torch.zeros(2)).item() == 0  # clamped
    kl = torch.tensor([2.0, 4.0], requires_grad=True)
    z = kto_reference_point(kl, torch.zeros(2))
    assert z.item() == 3.0 and not z.requires_grad
    assert kl_pairs(3).tolist() == [2, 0, 1]


def test_gradient_direction_and_z0_detached():
    x = torch.tensor([-5.0, -5.0], requires_grad=True)
    kl = torch.tensor([1.0, 2.0], requires_grad=True)
    kto_loss(x, torch.full((2,), -5.5), torch.tensor([True, False]), kl, torch.zeros(2))[0].sum().backward()
    assert x.grad[0] < 0 < x.grad[1] and kl.grad is None


def test_bad_input_and_balance():
    z = torch.zeros(4)
    with pytest.raises(ValueError, match="desirable"):
        kto_loss(z, z, torch.ones(3).bool(), z, z)
    with pytest.raises(ValueError, match="kl_ref_logps"):
        kto_loss(z, z, z.bool(), z, torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        kto_loss(z, z, z.bool(), z, z, beta=0)
    with pytest.raises(ValueError, match="undesirable_weight"):
        kto_loss(z, z, z.bool(), z, z, undesirable_weight=-1)
    with pytest.raises(ValueError, match="batch size"):
        kl_pairs(1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert kto_balance(50, 50) == 1.0 and not w
        kto_balance(10, 90)
        assert w
