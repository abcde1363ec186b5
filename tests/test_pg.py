"Tests for alignbook.lm.pg: parity with TRL's GRPO formulas, k3 invariants, GAE, dapo accumulation, bad input."

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignbook.lm.pg import (
    gae,
    grpo_advantages,
    grpo_loss,
    k3_kl,
    ppo_clip_loss,
    reinforce_loss,
    rloo_advantages,
    terminal_rewards,
    value_loss,
    ValueHead,
    check_grpo_advantages,
)

B, T, G = 8, 7, 4


def _rand(seed=0, B=B, T=T):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(B, T, generator=g)
    ref = logps.detach() + 0.5 * torch.randn(B, T, generator=g)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lens[:, None]).long()
    adv = torch.randn(B, generator=g)
    return logps, old, ref, mask, adv


# ---------------------------------------------------------------- TRL's own code as the anchor
def _trl_loss(
    logps, old, ref, mask, adv, loss_type, beta, eps_low, eps_high, max_len, ga=1, nprocs=1, n_items=None
):
    "Run trl.GRPOTrainer._compute_loss with the model forward stubbed to return `logps`."
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    acc = SimpleNamespace(
        num_processes=nprocs,
        sync_gradients=False,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
    )
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=ga)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0,
        aux_loss_enabled=False,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=args,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=ga,
        max_completion_length=max_len,
        accelerator=acc,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    B, T = logps.shape
    inputs = dict(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long),
        prompt_mask=torch.ones(B, 1, dtype=torch.long),
        completion_ids=torch.zeros(B, T, dtype=torch.long),
        completion_mask=mask,
        advantages=adv,
        old_per_token_logps=old,
        ref_per_token_logps=ref,
        num_items_in_batch=torch.tensor(float(mask.sum() if n_items is None else n_items)),
    )
    return trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_grpo_loss_matches_trl(loss_type, beta, eps_high):
    logps, old, ref, mask, adv = _rand(1)
    ours = grpo_loss(
        logps,
        old,
        adv,
        mask,
        eps_low=0.2,
        eps_high=eps_high,
        beta=beta,
        ref_logps=ref if beta else None,
        loss_type=loss_type,
        max_completion_length=T + 3,
    )
    theirs = _trl_loss(logps, old, ref, mask, adv.clone(), loss_type, beta, 0.2, eps_high, T + 3)
    torch.testing.assert_close(ours, theirs)
    (g1,) = torch.autograd.grad(ours, logps)
    (g2,) = torch.autograd.grad(theirs, logps)
    torch.testing.assert_close(g1, g2)


def test_grpo_loss_on_policy_matches_trl():
    "old_logps=None means one update per generation: TRL then uses logps.detach()."
    logps, _, _, mask, adv = _rand(2)
    ours = grpo_loss(logps, None, adv, mask, loss_type="grpo")
    theirs = _trl_loss(logps, None, None, mask, adv.clone(), "grpo", 0.0, 0.2, 0.2, T)
    torch.testing.assert_close(ours, theirs)


def test_dapo_matches_trl_with_accumulation_and_processes():
    "TRL's dapo normaliser: num_items_in_batch (whole generation batch, all processes) / num_processes."
    logps, old, _, mask, adv = _rand(3)
    n_total = 40.0
    ours = grpo_loss(logps, old, adv, mask, loss_type="dapo", num_items_in_batch=n_total, num_processes=2)
    theirs = _trl_loss(
        logps, old, None, mask, adv.clone(), "dapo", 0.0, 0.2, 0.2, T, ga=2, nprocs=2, n_items=n_total
    )
    torch.testing.assert_close(ours, theirs)


def _trl_advantages(rewards, G, scale):
    "TRL's formula (sum_then_normalize branch) written out with TRL's own nanstd."
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
    std = (
        nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
        if scale in ("group", "none")
        else nanstd(rewards).expand_as(rewards)
    )
    adv = rewards - mean
    return adv / (std + 1e-4) if scale != "none" else adv


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("G", [2, 4, 8])
def test_grpo_advantages_match_trl(scale, G):
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(G)
    r = torch.randint(-3, 6, (5 * G,), generator=g).float()
    r[:G] = -1.0  # one group with equal rewards
    torch.testing.assert_close(grpo_advantages(r, G, scale), _trl_advantages(r, G, scale))


def test_equal_rewards_zero_advantage():
    for scale in ("group", "batch", "none"):
        assert torch.equal(grpo_advantages(torch.full((12,), 5.0), 4, scale), torch.zeros(12))
    r = torch.tensor([5.0, 5.0, 5.0, 5.0, -1.0, 5.0, -3.0, -2.0])
    assert torch.equal(grpo_advantages(r, 4)[:4], torch.zeros(4))
    assert torch.equal(rloo_advantages(r, 4)[:4], torch.zeros(4))


def test_grpo_advantages_sum_to_zero_per_group():
    r = torch.randn(32)
    for scale in ("group", "batch", "none"):
        torch.testing.assert_close(
            grpo_advantages(r, 8, scale).view(4, 8).sum(1), torch.zeros(4), atol=1e-5, rtol=0
        )


# ---------------------------------------------------------------- k3
def test_k3_invariants():
    torch.manual_seed(0)
    a, b = torch.randn(10_000) * 4, torch.randn(10_000) * 4
    assert (k3_kl(a, b) >= 0).all()
    assert torch.equal(k3_kl(a, a), torch.zeros_like(a))
    d = torch.logspace(-8, -2, 50) * torch.tensor([1.0, -1.0]).repeat(25)
    torch.testing.assert_close(k3_kl(torch.zeros(50), d), 0.5 * d**2, rtol=2e-2, atol=0)
    d64 = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(
        k3_kl(torch.zeros(101), d64.float()).double(), torch.exp(d64) - d64 - 1, rtol=1e-5, atol=1e-7
    )


def test_k3_small_difference_keeps_digits():
    "Naive exp(d)-d-1 in fp32 returns 0 at d=1e-5; k3_kl returns 5e-11."
    d = torch.tensor([1e-5])
    assert (torch.exp(d) - d - 1).item() == 0.0
    torch.testing.assert_close(k3_kl(torch.zeros(1), d), torch.tensor([5e-11]), rtol=1e-3, atol=0)


def test_k3_bf16_and_gradient():
    lp = torch.zeros(4, requires_grad=True)
    ref = torch.tensor([0.5, -0.5, 1e-3, 0.0])
    k3_kl(lp, ref).sum().backward()
    torch.testing.assert_close(lp.grad, -(torch.exp(ref) - 1), rtol=1e-4, atol=1e-7)  # d/dlogp = 1 - e^d
    assert k3_kl(lp.detach().bfloat16(), ref.bfloat16()).dtype == torch.bfloat16


# ---------------------------------------------------------------- dapo accumulation
@pytest.mark.parametrize("splits", [[[0, 1, 2], [3, 4, 5, 6, 7]], [[0], [1, 2, 3, 4, 5, 6], [7]]])
def test_dapo_invariant_to_accumulation_splits(splits):
    logps, old, _, mask, adv = _rand(4)
    full = grpo_loss(logps, old, adv, mask, loss_type="dapo")
    (g_full,) = torch.autograd.grad(full, logps)
    n = mask.sum()
    parts = [
        grpo_loss(logps[i], old[i], adv[i], mask[i], loss_type="dapo", num_items_in_batch=n) for i in splits
    ]
    (g_split,) = torch.autograd.grad(sum(parts), logps)
    torch.testing.assert_close(sum(parts), full)
    torch.testing.assert_close(g_split, g_full)
    # without the global normaliser the split changes the gradient (this is why the argument exists)
    parts_local = [
        grpo_loss(logps[i], old[i], adv[i], mask[i], loss_type="dapo") / len(splits) for i in splits
    ]
    (g_local,) = torch.autograd.grad(sum(parts_local), logps)
    assert not torch.allclose(g_local, g_full)


def test_on_policy_loss_zero_gradient_not():
    torch.manual_seed(0)
    logits = torch.randn(8, 5, 11, requires_grad=True)
    lp = logits.log_softmax(-1).gather(-1, torch.randint(0, 11, (8, 5, 1))).squeeze(-1)
    adv = grpo_advantages(torch.tensor([5.0, -1, -1, 5, -3, 5, -2, -1]), 4)
    loss = grpo_loss(lp, None, adv, torch.ones(8, 5), loss_type="grpo")
    assert abs(loss.item()) < 1e-6
    (g,) = torch.autograd.grad(loss, logits)
    assert g.norm() > 1e-2


# ---------------------------------------------------------------- PPO pieces
def test_gae_hand_computation():
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    R = terminal_rewards(torch.tensor([1.0, -2.0]), m)
    assert torch.equal(R, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, -2.0, 0.0, 0.0]]))
    V = torch.tensor([[0.5, 0.2, 0.1, 7.0], [0.0, 1.0, 3.0, 3.0]])
    A, ret = gae(R, V, m, gamma=0.9, lam=0.5)
    # row 0: δ = [-0.32, -0.11, 0.9]; A2 = .9, A1 = -.11 + .45*.9, A0 = -.32 + .45*A1
    # row 1: δ1 = -2 - 1 = -3; δ0 = 0.9*1 - 0 = 0.9; A1 = -3; A0 = 0.9 + .45*(-3) = -0.45
    torch.testing.assert_close(A, torch.tensor([[-0.18725, 0.295, 0.9, 0.0], [-0.45, -3.0, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.31275, 0.495, 1.0, 0.0], [-0.45, -2.0, 0.0, 0.0]]))


def test_gae_lambda1_gamma1_is_return_minus_value():
    m = torch.ones(3, 5)
    R = terminal_rewards(torch.tensor([1.0, 2.0, 3.0]), m)
    V = torch.randn(3, 5)
    A, ret = gae(R, V, m, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([1.0, 2.0, 3.0])[:, None].expand(3, 5))
    torch.testing.assert_close(A, ret - V)


def test_ppo_clip_and_value_loss():
    clip_loss = ppo_clip_loss(
        torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])),
        torch.zeros(1, 4),
        torch.tensor([[1.0, 1.0, -1.0, -1.0]]),
    )
    torch.testing.assert_close(clip_loss, torch.tensor([[-1.2, -0.5, 1.5, 0.8]]))
    v = torch.tensor([[1.0, 0.0]], requires_grad=True)
    vl = value_loss(v, torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2), clip=0.2)
    torch.testing.assert_close(vl, torch.tensor([0.5 * (1.0 + 1.0) / 2]))  # max(unclipped, clipped) per token
    head = ValueHead(16)
    assert head(torch.randn(2, 3, 16)).shape == (2, 3)


def test_reinforce_and_rloo():
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), torch.tensor([-1.5, 0.0, 1.5])
    )
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    reinforce_loss(lp, torch.tensor([2.0, -1.0])).sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([-2.0, 1.0]))
    assert check_grpo_advantages(lambda r, G: grpo_advantages(r, G)) is None
    with pytest.raises(AssertionError):
        check_grpo_advantages(lambda r, G: grpo_advantages(r, G, "none"))


# ---------------------------------------------------------------- bad input
def test_bad_input_errors():
    logps, old, ref, mask, adv = _rand(5)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, old, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logps, old, adv, mask[:, :-1])
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logps, old, adv[:-1], mask)
    with pytest.raises(ValueError, match="old_logps"):
        grpo_loss(logps, old[:-1], adv, mask)
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.ones(7), 4)
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(torch.ones(8), 4, scale="std")
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.ones(8), 0)
    with pytest.raises(ValueError, match="same shape"):
        k3_kl(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="must all be"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
