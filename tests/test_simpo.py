"Tests for alignbook.lm.simpo: parity with TRL's CPOTrainer(loss_type='simpo'), ties, gradients, bad input."

import math, types, pytest, torch
import torch.nn.functional as F
from alignbook.lm.simpo import simpo_loss


def trl_cpo_simpo(w, rej, beta, gamma):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    fake = types.SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        simpo_gamma=gamma,
        beta=beta,
        label_smoothing=0.0,
        accelerator=types.SimpleNamespace(device=w.device),
    )
    return CPOTrainer.cpo_loss(fake, w, rej)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.4), (10.0, 5.0), (0.5, 0.0)])
def test_parity_with_trl_cpo_simpo(beta, gamma):
    g = torch.Generator().manual_seed(0)
    w, rej = -torch.rand(64, generator=g) * 3, -torch.rand(64, generator=g) * 3
    got, rw, rl = simpo_loss(w, rej, beta=beta, gamma=gamma)
    want, twr, twl = trl_cpo_simpo(w, rej, beta, gamma)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rw, twr)
    torch.testing.assert_close(rl, twl)


def test_formula_and_ties():
    a = -torch.rand(8) * 2
    torch.testing.assert_close(simpo_loss(a, a, beta=2.0, gamma=0.0)[0], torch.full((8,), math.log(2)))
    torch.testing.assert_close(
        simpo_loss(a, a, beta=2.0, gamma=0.5)[0], torch.full((8,), F.softplus(torch.tensor(0.5)).item())
    )


def test_gradient_direction():
    w = torch.tensor([-1.0, -2.0], requires_grad=True)
    rej = torch.tensor([-1.5, -1.0], requires_grad=True)
    simpo_loss(w, rej)[0].sum().backward()
    assert (w.grad < 0).all() and (rej.grad > 0).all()


def test_bad_input():
    a = torch.zeros(4)
    with pytest.raises(ValueError, match="rejected_avg_logps"):
        simpo_loss(a, torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        simpo_loss(a, a, beta=0)
    with pytest.raises(ValueError, match="gamma"):
        simpo_loss(a, a, gamma=float("nan"))
