"Tests for alignbook.lm.preftrain: ln 2 at init through the pipeline, every objective and reference path."

import math, pytest, torch
from alignbook.config import get_config
from alignbook.models import toy_model, toy_tokenizer, add_lora
from alignbook.lm.reference import make_reference, precompute_reference, PrecomputedReference
from alignbook.lm.preftrain import build_data, paired_loss_fn, kto_loss_fn, add_kl_rows
from alignbook.lm.prefbatch import add_reference_logps

TOK = toy_tokenizer()
LN2 = math.log(2)
SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128)


def test_registered():
    for o in ("reward", "dpo", "ipo", "simpo", "orpo", "kto", "tdpo"):
        c = get_config(o, "toy")
        assert c.objective == o and c.model == "toy-base"
        g = get_config(o, "gpu")
        assert g.model.startswith("Qwen/") and g.lora and g.mixed_precision == "bf16"
    assert get_config("ipo", "toy").loss_type == "ipo"
    assert get_config("dpo", "gpu").dataset == "trl-lib/ultrafeedback_binarized"


@pytest.mark.parametrize("ref_kind", ["copy", "disabled_adapter", "second_adapter", "precomputed"])
def test_ln2_at_init_full_pipeline(ref_kind, tmp_path):
    pol = toy_model(TOK, **SMALL).eval()
    if ref_kind != "copy":
        pol = add_lora(pol, r=4, alpha=8).eval()
    cfg = get_config("dpo", "toy", n_train=8, n_eval=4, n_gen=0)
    d = build_data(cfg, TOK)
    rows = d["train"]
    online = make_reference(ref_kind if ref_kind != "precomputed" else "disabled_adapter", pol)
    ref = online
    if ref_kind == "precomputed":
        rows, _ = precompute_reference(online, pol, rows, d["collate"], tmp_path)
        ref = PrecomputedReference()
    b = d["collate"](rows)
    objs = ["dpo", "tdpo"] if ref_kind != "precomputed" else ["dpo"]
    for o in objs:
        for lt in ["sigmoid", "robust"] if o == "dpo" else [None]:
            c = (
                get_config(o, "toy")
                if lt is None
                else get_config(o, "toy", loss_type=lt, label_smoothing=0.1 if lt == "robust" else 0.0)
            )
            loss, m = paired_loss_fn(o, c, ref)(pol, b)
            assert loss.item() == pytest.approx(LN2, abs=1e-6), (o, lt)
            assert m["rewards/accuracies"] == 0.0 and m["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    # KTO: 0.5 at init (λ(1 − σ(0)))
    ck = get_config("kto", "toy", n_train=8, n_eval=4, n_gen=0)
    dk = build_data(ck, TOK)
    kb_rows = dk["train"]
    kref = online
    if ref_kind == "precomputed":
        kb_rows = add_reference_logps(online, pol, kb_rows, "kto", TOK.pad_token_id, tmp_path)
        kref = PrecomputedReference()
    loss, m = kto_loss_fn(ck, kref)(pol, dk["collate"](kb_rows))
    assert loss.item() == pytest.approx(0.5, abs=1e-6) and m["kl"] == 0


def test_concatenated_forward_gradient_lowers_dpo_loss():
    pol = toy_model(TOK, **SMALL)
    cfg = get_config("dpo", "toy", n_train=8, n_eval=4, n_gen=0, beta=0.5)
    d = build_data(cfg, TOK)
    b = d["collate"](d["train"])
    ref = make_reference("copy", pol)
    fn = paired_loss_fn("dpo", cfg, ref)
    opt = torch.optim.SGD(pol.parameters(), lr=0.5)
    l0, _ = fn(pol, b)
    l0.backward()
    opt.step()
    opt.zero_grad()
    l1, m = fn(pol, b)
    assert l1.item() < l0.item() and m["rewards/margins"] > 0


def test_kl_rows_are_mismatched():
    cfg = get_config("kto", "toy", n_train=6, n_eval=4, n_gen=0)
    d = build_data(cfg, TOK)
    for r in d["train"]:
        p = r["input_ids"][: r["completion_mask"].index(1)]
        assert r["kl_ids"][: len(p)] == p and r["kl_ids"][len(p) :] != r["input_ids"][len(p) :]
    b = d["collate"](d["train"][:4])
    assert {"kl_input_ids", "kl_attention_mask", "kl_completion_mask", "label"} <= set(b)
    with pytest.raises(ValueError, match="at least 2"):
        add_kl_rows(d["train"][:1])


def test_bad_objective_and_tdpo_precomputed():
    with pytest.raises(ValueError, match="unknown paired objective"):
        paired_loss_fn("foo", get_config("dpo", "toy"), None)
    with pytest.raises(ValueError, match="needs a reference"):
        paired_loss_fn("dpo", get_config("dpo", "toy"), None)


def test_build_data_from_local_trl_file(tmp_path):
    import json

    conv = lambda role, text: [{"role": role, "content": text}]
    rows = [
        {
            "chosen": conv("user", f"question {i}") + conv("assistant", "good answer"),
            "rejected": conv("user", f"question {i}") + conv("assistant", "bad"),
            "score_chosen": 9.0,
            "score_rejected": 1.0,
        }
        for i in range(20)
    ]
    rows.append(
        {
            "chosen": conv("user", "x" * 200) + conv("assistant", "a"),
            "rejected": conv("user", "x" * 200) + conv("assistant", "b"),
        }
    )
    p = tmp_path / "uf.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = get_config("dpo", "toy", dataset=str(p), n_train=None, n_eval=4, n_gen=0, max_prompt_length=64)
    d = build_data(cfg, TOK)
    assert len(d["train"]) + len(d["eval"]) == 20 and d["hands"] is None  # the long prompt was dropped
    b = d["collate"](d["train"][:3])
    assert b["input_ids"].shape[0] == 6
    ck = get_config("kto", "toy", dataset=str(p), n_train=None, n_eval=4, n_gen=0, max_prompt_length=64)
    dk = build_data(ck, TOK)
    assert len(dk["train"]) == 2 * (20 - len(dk["eval"])) and "kl_ids" in dk["train"][0]


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_gpu_preset_path_on_local_model_and_data(objective, tmp_path):
    "The gpu preset's code path (LoRA, adapters-off reference, TRL-format data) on a local model and file."
    import json

    mdir = tmp_path / "model"
    toy_model(TOK, **SMALL).save_pretrained(mdir)
    TOK.save_pretrained(mdir)
    conv = lambda role, text: [{"role": role, "content": text}]
    p = tmp_path / "data.jsonl"
    if objective == "kto":
        rows = [
            {
                "prompt": conv("user", f"q{i}"),
                "completion": conv("assistant", "yes" if i % 2 else "no"),
                "label": bool(i % 2),
            }
            for i in range(16)
        ]
    else:
        rows = [
            {
                "chosen": conv("user", f"q{i}") + conv("assistant", "good"),
                "rejected": conv("user", f"q{i}") + conv("assistant", "bad"),
            }
            for i in range(16)
        ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = get_config(
        objective,
        "gpu",
        model=str(mdir),
        dataset=str(p),
        max_steps=2,
        batch_size=4,
        grad_accum=1,
        n_eval=4,
        max_length=64,
        max_prompt_length=32,
        eval_every=0,
        save_every=0,
        out_dir=str(tmp_path / "run"),
        device="cpu",
    )
    from alignbook.lm.preftrain import train_preference

    s = train_preference(cfg)
    assert (
        cfg.lora and math.isfinite(s["loss"]) and (tmp_path / "run" / "final" / "model.safetensors").exists()
    )


@pytest.mark.parametrize("objective", ["dpo", "ipo", "simpo", "orpo"])
def test_shared_prompt_forward_matches_concatenated(objective):
    from alignbook.lm.preftrain import collate_shared_prompt

    pol = add_lora(toy_model(TOK, **SMALL), r=4, alpha=8)
    with torch.no_grad():
        for n, p in pol.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    cfg = get_config(objective, "toy", n_train=6, n_eval=4, n_gen=0)
    d = build_data(cfg, TOK)
    ref = make_reference("disabled_adapter", pol)
    fn = paired_loss_fn(objective, cfg, ref)
    l1, m1 = fn(pol, d["collate"](d["train"]))
    g1 = torch.autograd.grad(l1, [p for p in pol.parameters() if p.requires_grad])
    l2, m2 = fn(pol, collate_shared_prompt(d["train"], TOK.pad_token_id))
    g2 = torch.autograd.grad(l2, [p for p in pol.parameters() if p.requires_grad])
    assert l2.item() == pytest.approx(l1.item(), abs=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for k in m1:
        assert float(m2[k]) == pytest.approx(float(m1[k]), abs=1e-4), k
