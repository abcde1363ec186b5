"Online DPO: verifier pairs, the loss is DPO's on fresh pairs, the objective runs and resumes exactly."

import pytest
import torch

from alignbook.lm.online_dpo import verifier_pairs


class _E:
    def __init__(self, ret):
        self.ret, self.turns = ret, [dict(ret=ret)]


def test_pairs_best_vs_worst_and_ties_skipped():
    eps = [_E(-2), _E(5), _E(1), _E(-3), _E(0), _E(0), _E(0), _E(0)]
    assert [(c["ret"], r["ret"]) for c, r in verifier_pairs(eps, 4)] == [(5, -3)]
    assert verifier_pairs(eps[4:], 2) == []


def test_online_dpo_runs_and_resumes(tmp_path):
    from safetensors.torch import load_file
    from alignbook.config import get_config, OBJECTIVES, load_plugins
    from alignbook.lm.online_dpo import train_online_dpo

    load_plugins()
    assert "online-dpo" in OBJECTIVES
    kw = dict(hands_per_step=6, group_size=3, eval_every=0, eval_size=2, max_new_tokens=64, save_every=1)
    a = get_config("online-dpo", max_steps=2, out_dir=str(tmp_path / "a"), **kw)
    h = train_online_dpo(a, progress=False)["history"]
    assert sum(r["pairs"] for r in h) > 0
    first = next(r for r in h if r.get("pairs"))
    assert first["loss"] == pytest.approx(0.6931, abs=2e-3)  # −log σ(0) at the reference, on-policy
    b = a.replace(out_dir=str(tmp_path / "b"), max_steps=1)
    train_online_dpo(b, progress=False)
    train_online_dpo(b.replace(max_steps=2), progress=False)
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
