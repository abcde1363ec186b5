"Tests for alignbook.lm.orpo: stable log1mexp, parity with TRL's odds_ratio_loss, gradients, bad input."

import math, types, pytest, torch
from alignbook.lm.orpo import orpo_loss, log1mexp


def trl_odds_ratio(w, rej, beta):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    fake = types.SimpleNamespace(beta=beta, accelerator=types.SimpleNamespace(device=w.device))
    return ORPOTrainer.odds_ratio_loss(fake, w, rej)


@pytest.mark.parametrize("beta", [0.1, 0.25, 1.0])
def test_parity_with_trl(beta):
    g = torch.Generator().manual_seed(1)
    w, rej = -torch.rand(64, generator=g) * 4 - 1e-4, -torch.rand(64, generator=g) * 4 - 1e-4
    nll = torch.rand(64, generator=g)
    got, rw, rl, log_odds = orpo_loss(w, rej, nll, beta=beta)
    trl_losses, twr, twl, _, trl_log_odds_mean = trl_odds_ratio(w, rej, beta)
    torch.testing.assert_close(got, nll - trl_losses, rtol=1e-5, atol=1e-6)  # TRL: loss = NLL − mean(β·logσ)
    torch.testing.assert_close(log_odds.mean(), trl_log_odds_mean)
    torch.testing.assert_close(rw, twr)
    torch.testing.assert_close(rl, twl)


def test_log1mexp_stable():
    x = torch.tensor([-1e-12, -1e-6, -0.3, -0.6931, -0.7, -3.0, -40.0, -200.0], dtype=torch.float64)
    want = torch.tensor([math.log(-math.expm1(v)) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), want, rtol=1e-12, atol=1e-12)
    xf = torch.tensor([-1e-9, -100.0])
    assert torch.isfinite(log1mexp(xf)).all()
    assert log1mexp(torch.tensor(-100.0)).item() == pytest.approx(-math.exp(-100), abs=1e-40)


def test_tie_and_gradients():
    a, nll = -torch.rand(5), torch.rand(5)
    torch.testing.assert_close(orpo_loss(a, a, nll, beta=0.2)[0], nll + 0.2 * math.log(2))
    w = torch.tensor([-0.5, -3.0], requires_grad=True)
    rej = torch.tensor([-0.4, -2.0], requires_grad=True)
    orpo_loss(w, rej, torch.zeros(2))[0].sum().backward()
    assert (w.grad < 0).all() and (rej.grad > 0).all()
    # extreme inputs stay finite, gradients too
    w = torch.tensor([-1e-8], requires_grad=True)
    rej = torch.tensor([-90.0], requires_grad=True)
    out = orpo_loss(w, rej, torch.zeros(1))[0]
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()


def test_bad_input():
    a = torch.zeros(3) - 1
    with pytest.raises(ValueError, match="chosen_nll"):
        orpo_loss(a, a, torch.zeros(4))
    with pytest.raises(ValueError, match="beta"):
        orpo_loss(a, a, a, beta=0)
