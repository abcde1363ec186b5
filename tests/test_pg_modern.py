"GSPO, CISPO, SAPO, truncated importance sampling: parity with TRL's GRPOTrainer._compute_loss, invariants."

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignbook.lm.pg import grpo_loss, log_importance_weights, truncated_is_weights

B, T = 8, 7


def _rand(seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(B, T, generator=g)
    ref = logps.detach() + 0.5 * torch.randn(B, T, generator=g)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lens[:, None]).long()
    return logps, old, ref, mask, torch.randn(B, generator=g)


def _trl(
    logps, old, ref, mask, adv, loss_type, level="token", beta=0.0, eps_low=0.2, eps_high=0.2, is_w=None
):
    "TRL's own loss: GRPOTrainer._compute_loss with the model forward stubbed to return `logps`."
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    acc = SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x)
    acc.reduce = lambda x, reduction="sum": x
    args = SimpleNamespace(
        use_bias_correction_kl=False,
        delta=None,
        steps_per_generation=1,
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
    )
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0,
        aux_loss_enabled=False,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=args,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=is_w is not None,
        vllm_importance_sampling_correction=is_w is not None,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=T,
        accelerator=acc,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = dict(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long),
        prompt_mask=torch.ones(B, 1, dtype=torch.long),
        completion_ids=torch.zeros(B, T, dtype=torch.long),
        completion_mask=mask,
        advantages=adv,
        old_per_token_logps=old,
        ref_per_token_logps=ref,
        num_items_in_batch=torch.tensor(float(mask.sum())),
        importance_sampling_ratio=is_w,
    )
    return trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize(
    "loss_type,level,eps_high",
    [
        ("grpo", "sequence", 4e-4),
        ("grpo", "sequence", 0.2),
        ("cispo", "token", 5.0),
        ("cispo", "token", 1.1),
        ("sapo", "token", 0.2),
        ("sapo", "sequence", 0.2),
        ("dapo", "token", 0.28),
    ],
)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_matches_trl(loss_type, level, eps_high, beta):
    logps, old, ref, mask, adv = _rand(1)
    eps_low = 3e-4 if eps_high == 4e-4 else 0.2
    ours = grpo_loss(
        logps,
        old,
        adv,
        mask,
        eps_low,
        eps_high,
        beta,
        ref if beta else None,
        loss_type,
        importance_level=level,
    )
    theirs = _trl(logps, old, ref, mask, adv.clone(), loss_type, level, beta, eps_low, eps_high)
    torch.testing.assert_close(ours, theirs)
    (g1,) = torch.autograd.grad(ours, logps)
    (g2,) = torch.autograd.grad(theirs, logps)
    torch.testing.assert_close(g1, g2)


def test_truncated_is_matches_trl():
    logps, old, _, mask, adv = _rand(2)
    sampler = old + 0.4 * torch.randn(B, T, generator=torch.Generator().manual_seed(5))
    w = truncated_is_weights(old, sampler, cap=3.0)
    # TRL's token_truncate: clamp(exp((old − sampler)·mask), max=C)
    torch.testing.assert_close(w * mask + (1 - mask), torch.exp((old - sampler) * mask).clamp(max=3.0))
    ours = grpo_loss(logps, old, adv, mask, loss_type="dapo", is_weights=w)
    theirs = _trl(logps, old, None, mask, adv.clone(), "dapo", is_w=w)
    torch.testing.assert_close(ours, theirs)
    assert w.max() <= 3.0 and not w.requires_grad


def test_sequence_ratio_is_the_geometric_mean_and_shared_by_tokens():
    logps, old, _, mask, _ = _rand(3)
    lw = log_importance_weights(logps, old, mask, "sequence")
    assert lw.shape == (B, 1)
    for i in range(B):
        n = int(mask[i].sum())
        ratios = torch.exp(logps[i, :n] - old[i, :n]).detach()
        assert float(lw[i].exp()) == pytest.approx(float(ratios.prod() ** (1 / n)), rel=1e-5)
    with pytest.raises(ValueError, match="importance_level"):
        log_importance_weights(logps, old, mask, "token-mean")


def test_cispo_keeps_the_gradient_of_tokens_grpo_clips():
    "A token whose ratio is far outside the clip range: GRPO drops its gradient, CISPO keeps it (ε_max)."
    logps = torch.zeros(1, 3, requires_grad=True)
    old = torch.tensor([[0.0, -1.0, 0.0]])  # ratio e ≈ 2.7 on token 1
    mask, adv = torch.ones(1, 3), torch.tensor([1.0])
    (g_grpo,) = torch.autograd.grad(grpo_loss(logps, old, adv, mask, loss_type="dapo"), logps)
    (g_cispo,) = torch.autograd.grad(grpo_loss(logps, old, adv, mask, eps_high=2.0, loss_type="cispo"), logps)
    assert g_grpo[0, 1] == 0 and g_cispo[0, 1] == pytest.approx(-2.0 / 3)
    assert g_cispo[0, 0] == pytest.approx(-1.0 / 3)


def test_on_policy_sequence_level_equals_token_level_gradient_for_grpo():
    "At ratio 1 (one update per batch) GSPO and GRPO (loss_type grpo) agree: they differ off-policy."
    logps, _, _, mask, adv = _rand(4)
    g = [
        torch.autograd.grad(grpo_loss(logps, None, adv, mask, loss_type="grpo", importance_level=lv), logps)[
            0
        ]
        for lv in ("token", "sequence")
    ]
    torch.testing.assert_close(g[0], g[1])


@pytest.mark.parametrize("objective", ["gspo", "cispo"])
def test_cli_objectives_train(objective):
    from alignbook.config import get_config, OBJECTIVES, load_plugins

    load_plugins()
    assert objective in OBJECTIVES
    cfg = get_config(
        objective, max_steps=1, eval_every=0, eval_size=2, hands_per_step=2, group_size=3, max_new_tokens=64
    )
    out = OBJECTIVES[objective].train(cfg)
    h = out["history"][-1]
    assert out["algo"] == objective and h["step"] == 4 and h["grad_norm"] > 0  # 4 minibatch updates
    assert 0 <= h["clip_frac"] <= 1


def test_truncated_is_in_the_loop():
    from alignbook.config import get_config
    from alignbook.lm.rltrain import train_rl

    kw = dict(max_steps=1, eval_every=0, eval_size=2, hands_per_step=2, group_size=3, max_new_tokens=64)
    h = train_rl(get_config("grpo", sampler_temperature=1.3, tis_cap=2.0, **kw), progress=False)["history"][
        -1
    ]
    assert h["is_ratio_max"] > 1.0 and h["is_ratio_mean"] > 0
    with pytest.raises(ValueError, match="tis_cap"):
        train_rl(get_config("grpo", tis_cap=2.0, **kw), progress=False)
