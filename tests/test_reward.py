"Tests for alignbook.lm.reward: Bradley–Terry loss (TRL RewardTrainer formula), accuracy, scalar head."

import math, pytest, torch
import torch.nn.functional as F
from alignbook.lm.reward import bradley_terry_loss, pairwise_accuracy


def test_formula_and_margin():
    g = torch.Generator().manual_seed(0)
    a, b, m = torch.randn(32, generator=g), torch.randn(32, generator=g), torch.rand(32, generator=g)
    torch.testing.assert_close(bradley_terry_loss(a, b), -F.logsigmoid(a - b))
    torch.testing.assert_close(bradley_terry_loss(a, b, margin=m), -F.logsigmoid(a - b - m))
    torch.testing.assert_close(bradley_terry_loss(a, a), torch.full((32,), math.log(2)))


def test_gradient_and_accuracy():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    bradley_terry_loss(a, b).sum().backward()
    assert (a.grad < 0).all() and (b.grad > 0).all()
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 1.0])) == pytest.approx(
        2 / 3
    )


def test_bad_input():
    with pytest.raises(ValueError, match="rejected_rewards"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_scalar_head_reads_last_real_token(tmp_path):
    from alignbook.models import toy_model, toy_tokenizer
    from alignbook.lm.reward import load_reward_model, reward_scores

    tok = toy_tokenizer()
    toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64).save_pretrained(tmp_path)
    rm = load_reward_model(str(tmp_path), tok).eval()
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, tok.pad_token_id, tok.pad_token_id]])
    with torch.no_grad():
        s = reward_scores(rm, ids, (ids != tok.pad_token_id).long())
        s1 = reward_scores(rm, ids[1:, :2], torch.ones(1, 2, dtype=torch.long))
    assert s.shape == (2,) and torch.allclose(s[1:], s1, atol=1e-5)
