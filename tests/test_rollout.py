"Tests for alignbook.lm.rollout: sampling bookkeeping, log-probs of sampled tokens, verifier-in-the-loop episodes."

import random
import pytest
import torch

from alignbook.lm import gpoints
from alignbook.lm.rollout import (
    completion_token_logps,
    evaluate_policy,
    pack_batch,
    play_gpoints,
    render_prompt_ids,
    sample_completions,
)
from alignbook.models import toy_model, toy_tokenizer


@pytest.fixture(scope="module")
def tm():
    torch.manual_seed(0)
    tok = toy_tokenizer()
    return toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64), tok


def _conv(seed=0, rule=gpoints.ID_RULE):
    h = gpoints.sample_hand(random.Random(seed), rule)
    return h, [{"role": "user", "content": gpoints.toy_prompt(h)}]


def test_sampling_is_seeded_and_group_major(tm):
    m, tok = tm
    _, c1 = _conv(0)
    _, c2 = _conv(1)
    a = sample_completions(m, tok, [c1, c2], n=3, max_new_tokens=10, temperature=1.0, seed=3)
    b = sample_completions(m, tok, [c1, c2], n=3, max_new_tokens=10, temperature=1.0, seed=3)
    assert a.completion_ids == b.completion_ids and len(a) == 6
    assert a.prompt_ids[0] == a.prompt_ids[2] != a.prompt_ids[3]
    g = sample_completions(m, tok, [c1], n=3, max_new_tokens=10, temperature=0)
    assert g.completion_ids[0] == g.completion_ids[1] == g.completion_ids[2]


def test_completion_stops_at_eos(tm):
    m, tok = tm
    eos = tok.eos_token_id
    m2 = toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    with torch.no_grad():  # make EOS the most likely token everywhere
        m2.lm_head.weight.zero_()
        m2.lm_head.weight[eos] = 1.0
        m2.model.norm.weight.fill_(1.0)
    _, c = _conv(0)
    s = sample_completions(m2, tok, [c], n=2, max_new_tokens=10, temperature=0)
    assert all(ids == [eos] for ids in s.completion_ids) and s.truncated == [False, False]
    assert s.texts == ["", ""]


def test_logps_match_unpadded_forward(tm):
    m, tok = tm
    _, c1 = _conv(0)
    _, c2 = _conv(5)
    s = sample_completions(m, tok, [c1, c2], n=2, max_new_tokens=7, temperature=1.0, seed=0)
    b = pack_batch(s.prompt_ids, s.completion_ids, tok.pad_token_id)
    lp, mask = completion_token_logps(m, b)
    for i in range(len(s)):
        row = torch.tensor([s.prompt_ids[i] + s.completion_ids[i]])
        with torch.no_grad():
            ref = m(row).logits.log_softmax(-1)[0, :-1].gather(-1, row[0, 1:, None])[:, 0]
        n = len(s.completion_ids[i])
        torch.testing.assert_close(lp[i][mask[i]], ref[-n:], atol=1e-5, rtol=1e-5)


def test_multiturn_revision_protocol(tm):
    m, tok = tm
    h, _ = _conv(0)
    eps, summ = play_gpoints(m, tok, [h], group_size=2, max_attempts=3, max_new_tokens=6, seed=0)
    assert len(eps) == 2 and summ["success_rate"] == 0.0
    for e in eps:
        assert len(e.turns) == 3
        assert e.ret == pytest.approx(sum(t["reward"] for t in e.turns) + gpoints.OUT_OF_ATTEMPTS_REWARD)
        later = tok.decode(e.turns[2]["prompt_ids"])
        assert later.count("You failed this trial because") == 2  # full history keeps both messages
    eps2, _ = play_gpoints(m, tok, [h], max_attempts=3, max_new_tokens=6, seed=0, history="last")
    assert tok.decode(eps2[0].turns[2]["prompt_ids"]).count("You failed this trial because") == 1


def test_correct_answer_ends_episode(tm):
    "A policy that answers with the expert response succeeds on the first turn."
    _, tok = tm
    hands = gpoints.eval_hands(gpoints.OOD_RULE, 3, seed=0)
    res = gpoints.evaluate(
        lambda convs: [gpoints.expert_response(h) for h in hands[: len(convs)]], hands, max_attempts=3
    )
    assert res["success_rate"] == 1.0 and res["mean_attempts"] == 1.0


def test_evaluate_policy_and_errors(tm):
    m, tok = tm
    r = evaluate_policy(m, tok, "ood", n=3, max_new_tokens=5)
    assert r["rule"] == "ood" and r["n"] == 3 and "records" not in r
    with pytest.raises(ValueError, match="rule must be"):
        evaluate_policy(m, tok, "x")
    with pytest.raises(ValueError, match="history"):
        play_gpoints(m, tok, [], history="none")
    with pytest.raises(ValueError, match="empty completions"):
        pack_batch([[1, 2]], [[]], 0)
    with pytest.raises(ValueError, match="prompt 0"):
        render_prompt_ids(tok, [123])
    with pytest.raises(ValueError, match="temperature"):
        sample_completions(m, tok, ["x"], temperature=-1)
