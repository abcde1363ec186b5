"Issue #8 (preference side): ORPO's NLL, sft_chosen across micro-batches, dropout off, ref_model honoured."

import pytest, torch
import torch.nn.functional as F
from alignbook.config import get_config
from alignbook.models import toy_model, toy_tokenizer, add_lora
from alignbook.lm.logps import sequence_logps
from alignbook.lm.preftrain import build_data, paired_loss_fn, train_preference

TOK = toy_tokenizer()
SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128)


def saved_model(path, seed):
    toy_model(TOK, seed=seed, **SMALL).save_pretrained(path)
    TOK.save_pretrained(path)
    return str(path)


def tiny_cfg(objective, **kw):
    base = dict(n_train=8, n_eval=4, n_gen=0, batch_size=8, max_steps=1, log_every=1, device="cpu")
    return get_config(objective, "toy", **{**base, **kw})


def trl_orpo_nll(model, batch):
    "TRL's ORPOTrainer (decoder-only): labels = input_ids where attention_mask == 1; CE over the chosen rows."
    B = batch["input_ids"].shape[0] // 2
    ids, am = batch["input_ids"][:B], batch["attention_mask"][:B]
    logits = model(input_ids=ids, attention_mask=am).logits
    labels = torch.where(am == 1, ids, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def test_orpo_nll_is_token_mean_over_prompt_and_response():
    m = toy_model(TOK, **SMALL).eval()
    cfg = tiny_cfg("orpo", share_prompt=False)
    d = build_data(cfg, TOK)
    b = d["collate"](d["train"])
    loss, met = paired_loss_fn("orpo", cfg, None)(m, b)
    with torch.no_grad():
        want = trl_orpo_nll(m, b)
    assert float(met["nll"]) == pytest.approx(want.item(), rel=1e-5)
    # the completion-only mean is an explicit option: the mean of each chosen row's average completion NLL
    c2 = cfg.replace(orpo_nll="completion")
    _, met2 = paired_loss_fn("orpo", c2, None)(m, b)
    B = b["input_ids"].shape[0] // 2
    lp = sequence_logps(m, *(b[k][:B] for k in ("input_ids", "attention_mask", "completion_mask")))
    assert float(met2["nll"]) == pytest.approx((-lp.avg).mean().item(), rel=1e-5)
    assert abs(float(met2["nll"]) - float(met["nll"])) > 1e-3
    with pytest.raises(ValueError, match="orpo_nll"):
        paired_loss_fn("orpo", cfg.replace(orpo_nll="tokens"), None)


def test_orpo_loss_is_nll_plus_odds_ratio_term():
    from alignbook.lm.orpo import orpo_loss

    m = toy_model(TOK, **SMALL).eval()
    cfg = tiny_cfg("orpo", share_prompt=False)
    d = build_data(cfg, TOK)
    b = d["collate"](d["train"])
    loss, _ = paired_loss_fn("orpo", cfg, None)(m, b)
    with torch.no_grad():
        lp = sequence_logps(m, b["input_ids"], b["attention_mask"], b["completion_mask"])
        w, rej = lp.chunk2()
        odds_term = orpo_loss(w.avg, rej.avg, torch.zeros_like(w.avg), beta=cfg.beta)[0].mean()
        want = trl_orpo_nll(m, b) + odds_term
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def adam_grads(tr):
    "The first AdamW step's exp_avg is (1 − β1)·g: recover the gradient the step used."
    b1 = tr.optimizer.param_groups[0]["betas"][0]
    return [tr.optimizer.state[p]["exp_avg"] / (1 - b1) for p in tr.unwrapped.parameters() if p.requires_grad]


def test_sft_chosen_is_token_normalised_across_micro_batches(tmp_path):
    mdir = saved_model(tmp_path / "m", seed=0)
    runs = {}
    for bs, ga in ((8, 1), (4, 2)):
        cfg = tiny_cfg("sft_chosen", model=mdir, batch_size=bs, grad_accum=ga, max_grad_norm=0, lr=1e-3)
        _, tr = train_preference(cfg, return_trainer=True)
        runs[bs] = (tr.history[0]["loss"], adam_grads(tr))
    (l1, g1), (l2, g2) = runs[8], runs[4]
    assert l2 == pytest.approx(l1, rel=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_dropout_off_in_the_policy_during_preference_training():
    pol = add_lora(toy_model(TOK, attention_dropout=0.5, **SMALL), r=4, alpha=8, dropout=0.5)
    cfg = tiny_cfg("dpo", lora=True, max_steps=1)
    _, tr = train_preference(cfg, model=pol, tokenizer=TOK, return_trainer=True)
    m = tr.unwrapped
    assert all(x.p == 0 for x in m.modules() if isinstance(x, torch.nn.Dropout))
    assert all(getattr(x, "attention_dropout", 0.0) == 0 for x in m.modules())
    d = build_data(cfg, TOK)
    b = d["collate"](d["train"])
    m.train()
    fn = paired_loss_fn("simpo", get_config("simpo", "toy"), None)
    assert fn(m, b)[0].item() == fn(m, b)[0].item()  # train mode, yet deterministic
    # TRL's default; the config can keep dropout on
    assert get_config("dpo", "toy").disable_dropout is True


@pytest.mark.parametrize(
    "objective,reference",
    [
        ("dpo", "auto"),
        ("ipo", "auto"),
        ("kto", "auto"),
        ("tdpo", "auto"),
        ("dpo", "precomputed"),
        ("kto", "precomputed"),
    ],
)
def test_ref_model_is_honoured(objective, reference, tmp_path):
    pdir, xdir = saved_model(tmp_path / "policy", seed=0), saved_model(tmp_path / "ref", seed=1)
    n_train = 4 if objective == "kto" else 8  # KTO: 4 pairs give 8 unpaired rows; one batch holds every row
    cfg = tiny_cfg(
        objective,
        model=pdir,
        ref_model=xdir,
        reference=reference,
        n_train=n_train,
        lr=1e-12,
        ref_cache_dir=str(tmp_path / "c"),
    )
    if "share_prompt" in cfg:
        cfg = cfg.replace(share_prompt=False)
    _, tr = train_preference(cfg, return_trainer=True)
    from alignbook.models import load_causal_lm

    pol, ref = load_causal_lm(pdir), load_causal_lm(xdir)
    d = build_data(cfg, TOK)
    b = d["collate"](d["train"])
    if objective == "kto":
        keep = b["label"].bool()
        main = [b[k] for k in ("input_ids", "attention_mask", "completion_mask")]
    else:
        B = b["input_ids"].shape[0] // 2
        keep = torch.ones(B, dtype=torch.bool)
        main = [b[k][:B] for k in ("input_ids", "attention_mask", "completion_mask")]
    with torch.no_grad():
        delta = sequence_logps(pol, *main).sum - sequence_logps(ref, *main).sum
    want = cfg.beta * delta[keep].mean().item()
    got = tr.history[0]["rewards/chosen"]
    assert abs(want) > 1e-3 and got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_layering_of_bench_package():
    "Benchmarks live under alignbook.bench; preference modules never import it; it never imports the CLI."
    import re
    from pathlib import Path
    import alignbook

    root = Path(alignbook.__file__).parent
    assert {"__init__.py", "sft.py", "dpo.py"} <= {p.name for p in (root / "bench").glob("*.py")}
    assert not (root / "bench.py").exists() and not (root / "lm" / "prefbench.py").exists()
    for p in (root / "bench").glob("*.py"):
        assert not re.search(r"alignbook\.cli|from \.\.cli|import cli", p.read_text()), p.name
    mine = "dpo simpo orpo kto tdpo reward prefdata sft reference prefbatch prefloss prefeval preftrain"
    for name in mine.split():
        src = (root / "lm" / f"{name}.py").read_text()
        assert not re.search(r"alignbook\.bench|from \.\.bench", src), name
