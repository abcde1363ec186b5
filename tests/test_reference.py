"Tests for alignbook.lm.reference: the four ways agree, stay frozen; the cache key tracks data and weights."

import pytest, torch
from alignbook.models import toy_model, toy_tokenizer, add_lora
from alignbook.data import collate_preference
from alignbook.lm.logps import sequence_logps
from alignbook.lm.dpo import dpo_loss
from alignbook.lm.reference import (
    make_reference,
    precompute_reference,
    PrecomputedReference,
    AdapterReference,
    CopyReference,
    eval_mode,
    assert_frozen,
    REFERENCES,
)

TOK = toy_tokenizer()


def rows(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        r = lambda lo, hi: torch.randint(
            10, 60, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g
        ).tolist()
        p, c, rj = r(3, 8), r(2, 6), r(2, 6)
        out.append(
            dict(
                chosen_ids=p + c,
                chosen_mask=[0] * len(p) + [1] * len(c),
                rejected_ids=p + rj,
                rejected_mask=[0] * len(p) + [1] * len(rj),
            )
        )
    return out


def collate(rs):
    return collate_preference(rs, TOK.pad_token_id)


@pytest.fixture
def policy():
    return add_lora(
        toy_model(TOK, num_hidden_layers=2, hidden_size=64, intermediate_size=128), r=4, alpha=8, dropout=0.1
    )


def policy_logps(policy, b):
    with torch.no_grad(), eval_mode(policy):
        return sequence_logps(policy, b["input_ids"], b["attention_mask"], b["completion_mask"]).sum


def test_four_ways_identical_losses_fresh_adapter(policy, tmp_path):
    rs = rows()
    b = collate(rs)
    refs = {k: make_reference(k, policy) for k in ("copy", "disabled_adapter", "second_adapter")}
    pre_rows, _ = precompute_reference(refs["copy"], policy, rs, collate, tmp_path)
    refs["precomputed"] = make_reference("precomputed", policy)
    pb = collate(pre_rows)
    pol = policy_logps(policy, b)
    w, rej = pol.chunk(2)
    losses = {}
    for k, r in refs.items():
        rw, rl = r.logps(policy, pb).chunk(2)
        losses[k] = dpo_loss(w, rej, rw, rl)[0]
    for k in REFERENCES:
        torch.testing.assert_close(losses[k], losses["copy"], rtol=0, atol=1e-6)
        torch.testing.assert_close(
            losses[k], torch.full_like(losses[k], 0.6931471805599453), rtol=0, atol=1e-5
        )


def test_trained_adapter_paths_agree_and_stay_frozen(policy, tmp_path):
    rs = rows()
    b = collate(rs)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    now = policy_logps(policy, b)
    cp, ad = CopyReference(policy), AdapterReference(policy, name="sft")
    pre, _ = precompute_reference(ad, policy, rs, collate, tmp_path)
    for r, bb in ((cp, b), (ad, b), (PrecomputedReference(), collate(pre))):
        torch.testing.assert_close(r.logps(policy, bb), now, rtol=0, atol=1e-5)
    assert not torch.allclose(make_reference("disabled_adapter", policy).logps(policy, b), now, atol=1e-3)
    assert not any(p.requires_grad for n, p in policy.named_parameters() if ".sft." in n)
    assert any(p.requires_grad for n, p in policy.named_parameters() if ".default." in n)
    for r in (cp, ad, make_reference("disabled_adapter", policy)):
        assert_frozen(r, policy, b)


def test_cache_key_tracks_data_and_weights(policy, tmp_path):
    rs = rows()
    ref = make_reference("copy", policy)
    _, p1 = precompute_reference(ref, policy, rs, collate, tmp_path)
    _, p1b = precompute_reference(ref, policy, rs, collate, tmp_path)
    _, p2 = precompute_reference(ref, policy, rows(seed=1), collate, tmp_path)
    with torch.no_grad():
        next(ref.model.parameters()).add_(0.01)
    _, p3 = precompute_reference(ref, policy, rs, collate, tmp_path)
    assert p1 == p1b and len({p1, p2, p3}) == 3 and p1.suffix == ".safetensors"


def test_errors():
    m = toy_model(TOK, num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    with pytest.raises(ValueError, match="lora=True"):
        make_reference("disabled_adapter", m).logps(m, collate(rows(2)))
    with pytest.raises(ValueError, match="lora=True"):
        make_reference("second_adapter", m)
    with pytest.raises(ValueError, match="unknown reference"):
        make_reference("nope", m)
    with pytest.raises(KeyError, match="precompute_reference"):
        PrecomputedReference().logps(m, collate(rows(2)))
    with pytest.raises(ValueError, match="TDPO"):
        PrecomputedReference().forward(m, collate(rows(2)))


def test_make_reference_from_config_loads_ref_model(tmp_path):
    from alignbook.config import get_config

    xdir = tmp_path / "x"
    x = toy_model(TOK, seed=1, num_hidden_layers=2, hidden_size=64, intermediate_size=128)
    x.save_pretrained(xdir)
    pol = toy_model(TOK, seed=0, num_hidden_layers=2, hidden_size=64, intermediate_size=128)
    b = collate(rows())
    ref = make_reference(get_config("dpo", "toy", ref_model=str(xdir)), pol)
    torch.testing.assert_close(ref.logps(pol, b), policy_logps(x, b), rtol=0, atol=1e-5)
    assert not torch.allclose(ref.logps(pol, b), policy_logps(pol, b), atol=1e-3)
    pol.train()
    with ref.active(pol) as m:
        assert not m.training and not torch.is_grad_enabled()
        assert not any(p.requires_grad for p in m.parameters())
    assert torch.is_grad_enabled() and pol.training
    # no ref_model: a frozen copy of the policy (or its adapters switched off with LoRA)
    assert isinstance(make_reference(get_config("dpo", "toy"), pol), CopyReference)
    lpol = add_lora(pol, r=4, alpha=8)
    assert make_reference(get_config("dpo", "toy", lora=True), lpol).kind == "disabled_adapter"
    assert make_reference(get_config("dpo", "toy", lora=True, ref_model=str(xdir)), lpol).kind == "copy"
    with pytest.raises(ValueError, match="ref_model"):
        make_reference(get_config("dpo", "toy", reference="disabled_adapter", ref_model=str(xdir)), lpol)
    # the reference of a disabled-adapter policy is the base: active() switches adapters off and back on
    with torch.no_grad():
        for n, p in lpol.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    dis = make_reference("disabled_adapter", lpol)
    with dis.active(lpol) as m:
        inside = sequence_logps(m, b["input_ids"], b["attention_mask"], b["completion_mask"]).sum
    assert not torch.allclose(inside, policy_logps(lpol, b), atol=1e-4)


def test_no_private_reference_attribute_used_outside_its_module():
    import re
    from pathlib import Path
    import alignbook

    root = Path(alignbook.__file__).parent
    bad = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "reference.py" and re.search(r"\._(active|swap)\(", p.read_text())
    ]
    assert not bad, f"modules reaching into Reference internals: {bad}"


def test_disabled_adapter_reference_serves_models_with_injected_adapters():
    "Adapters injected in place (as diffusers models carry them), not a PeftModel wrapper."
    from peft import LoraConfig, inject_adapter_in_model

    m = toy_model(TOK, num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    b = collate(rows(3))
    base = policy_logps(m, b)
    m = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), m)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    assert not torch.allclose(policy_logps(m, b), base, atol=1e-4)
    ref = make_reference("disabled_adapter", m)
    torch.testing.assert_close(ref.logps(m, b), base, rtol=0, atol=1e-5)
    assert not torch.allclose(policy_logps(m, b), base, atol=1e-4)  # adapters back on afterwards
