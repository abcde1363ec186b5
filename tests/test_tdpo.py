"Tests for alignbook.lm.tdpo: sequential KL over the vocabulary, ln 2 at init, TDPO1/2 formulas, sg in TDPO2."

import math, pytest, torch
import torch.nn.functional as F
from alignbook.lm.tdpo import tdpo_loss, sequential_kl


def official_formula(cw, cl, kw, kl, beta, alpha, variant):
    "The official TDPO repository's tdpo_loss (objectives.md §5), written independently."
    d = cw - cl
    if variant == 1:
        logits = d - (kl - kw)
    else:
        logits = d - alpha * (kl - kw.detach())
    return -F.logsigmoid(beta * logits)


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("beta,alpha", [(0.1, 0.5), (0.5, 0.2), (1.0, 1.0)])
def test_parity(variant, beta, alpha):
    g = torch.Generator().manual_seed(0)
    cw, cl = torch.randn(64, generator=g) * 5, torch.randn(64, generator=g) * 5
    kw, kl = torch.rand(64, generator=g) * 3, torch.rand(64, generator=g) * 3
    got, rw, rl = tdpo_loss(cw, cl, kw, kl, beta=beta, alpha=alpha, variant=variant)
    torch.testing.assert_close(got, official_formula(cw, cl, kw, kl, beta, alpha, variant))
    torch.testing.assert_close(rw, beta * cw)
    torch.testing.assert_close(rl, beta * cl)


def test_ln2_at_init_and_stop_gradient():
    z = torch.zeros(5)
    for v in (1, 2):
        torch.testing.assert_close(tdpo_loss(z, z, z, z, variant=v)[0], torch.full((5,), math.log(2)))
    kw = torch.rand(5, requires_grad=True)
    kl = torch.rand(5, requires_grad=True)
    tdpo_loss(z, z, kw, kl, variant=2)[0].sum().backward()
    assert kw.grad is None and (kl.grad > 0).all()
    kw.grad = kl.grad = None
    tdpo_loss(z, z, kw, kl, variant=1)[0].sum().backward()
    assert (kw.grad < 0).all() and (kl.grad > 0).all()


def test_sequential_kl():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 4, 7, generator=g), torch.randn(2, 4, 7, generator=g)
    m = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]]).float()
    p_ref = b.softmax(-1)
    want = ((p_ref * (p_ref.log() - a.log_softmax(-1))).sum(-1) * m).sum(-1)
    torch.testing.assert_close(sequential_kl(a, b, m), want)
    torch.testing.assert_close(sequential_kl(b, b, m), torch.zeros(2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="mask"):
        sequential_kl(a, b, m[:, :3])
    with pytest.raises(ValueError, match="ref_logits"):
        sequential_kl(a, b[:, :3], m)


def test_bad_input():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="variant"):
        tdpo_loss(z, z, z, z, variant=0)
    with pytest.raises(ValueError, match="beta"):
        tdpo_loss(z, z, z, z, beta=0)
    with pytest.raises(ValueError, match="rejected_seq_kl"):
        tdpo_loss(z, z, z, torch.zeros(2))
