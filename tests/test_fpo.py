"Tests for alignbook.lm.fpo: parity with objectives.md §6, ln 2 at init, stop-gradient, offline == online."

import math, pytest, torch
import torch.nn.functional as F
from alignbook.config import get_config
from alignbook.data import tokenize_preference, collate_preference
from alignbook.lm.fpo import (
    fpo_loss,
    feature_deviation,
    pool_completion,
    fpo_loss_fn,
    precompute_fpo_reference,
    cached_feature_deviation,
    check_feature_deviation,
    train_fpo,
    with_cached_features,
)
from alignbook.lm.prefdata import gpoints_preferences
from alignbook.lm.reference import make_reference, PrecomputedReference
from alignbook.lm.sae import SparseAutoencoder, save_sae
from alignbook.models import toy_tokenizer, toy_model


def formula_dev(pol, ref, k, select):
    "D(y) = (1/k)·Σ_{i∈I_k}(c̄_θ,i − c̄_ref,i)², I_k row by row with python sets."
    out = []
    for p, r in zip(pol.tolist(), ref.tolist()):
        top = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:k])
        idx = {"policy": top(p), "reference": top(r), "union": top(p) | top(r)}[select]
        out.append(sum((p[i] - r[i]) ** 2 for i in idx) / k)
    return torch.tensor(out)


def formula_loss(aw, al, rw, rl, dw, dl, beta, alpha):
    "−logσ(β·[(m_w − m_l) − α·(D_l − sg(D_w))]) as the public FPO code computes it."
    return -F.logsigmoid(beta * ((aw - rw) - (al - rl) - alpha * (dl - dw.detach())))


@pytest.mark.parametrize("select", ["policy", "reference", "union"])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_feature_deviation_parity(select, k):
    g = torch.Generator().manual_seed(k)
    pol = torch.rand(9, 40, generator=g).relu()  # continuous values: no ties in the top-k
    ref = torch.rand(9, 40, generator=g)
    torch.testing.assert_close(feature_deviation(pol, ref, k, select), formula_dev(pol, ref, k, select))


@pytest.mark.parametrize("beta,alpha", [(0.1, 0.5), (0.5, 0.0), (2.0, 1.5)])
def test_fpo_loss_parity(beta, alpha):
    g = torch.Generator().manual_seed(0)
    aw, al, rw, rl = (-torch.rand(32, generator=g) * 3 for _ in range(4))
    dw, dl = torch.rand(32, generator=g), torch.rand(32, generator=g)
    losses, cr, rr = fpo_loss(aw, al, rw, rl, dw, dl, beta=beta, alpha=alpha)
    torch.testing.assert_close(losses, formula_loss(aw, al, rw, rl, dw, dl, beta, alpha))
    torch.testing.assert_close(cr, beta * (aw - rw))
    torch.testing.assert_close(rr, beta * (al - rl))
    assert losses.shape == (32,)


def test_ln2_stop_gradient_and_directions():
    z = torch.zeros(5)
    a = -torch.rand(5)
    torch.testing.assert_close(fpo_loss(a, a, a, a, z, z)[0], torch.full((5,), math.log(2)))
    aw, al = a.clone().requires_grad_(), a.clone().requires_grad_()
    dw, dl = torch.rand(5, requires_grad=True), torch.rand(5, requires_grad=True)
    fpo_loss(aw, al, a, a, dw, dl)[0].sum().backward()
    assert dw.grad is None  # no gradient reaches the chosen deviation
    assert (aw.grad < 0).all() and (al.grad > 0).all() and (dl.grad > 0).all()
    # the gradient through feature_deviation reaches the policy's pooled activations only
    pol = torch.rand(3, 10, requires_grad=True)
    ref = torch.rand(3, 10)
    feature_deviation(pol, ref, 4).sum().backward()
    assert (pol.grad != 0).sum(1).le(4).all()


def test_bad_input_named():
    z = torch.zeros(4)
    with pytest.raises(ValueError, match="rejected_feature_dev"):
        fpo_loss(z, z, z, z, z, z[:3])
    with pytest.raises(ValueError, match="beta"):
        fpo_loss(z, z, z, z, z, z, beta=0)
    with pytest.raises(ValueError, match="alpha"):
        fpo_loss(z, z, z, z, z, z, alpha=float("nan"))
    p = torch.rand(2, 8)
    with pytest.raises(ValueError, match=r"`k`.*F=8"):
        feature_deviation(p, p, k=9)
    with pytest.raises(ValueError, match="ref_acts"):
        feature_deviation(p, p[:, :4], k=2)
    with pytest.raises(ValueError, match="select"):
        feature_deviation(p, p, k=2, select="top")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        pool_completion(torch.rand(2, 3, 4), torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_pool_completion_is_a_masked_mean():
    acts = torch.rand(3, 6, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
    want = torch.stack([acts[i][mask[i].bool()].mean(0) for i in range(3)])
    torch.testing.assert_close(pool_completion(acts, mask), want)


def test_check_helper():
    assert check_feature_deviation(lambda p, r, k: feature_deviation(p, r, k)) is None
    with pytest.raises(AssertionError, match="divided by F"):
        check_feature_deviation(lambda p, r, k: feature_deviation(p, r, k) * k / p.shape[1])


# --- the whole pipeline on a small toy model --------------------------------------------------------------
def setup_pipeline(layer=1, d_sae=64, k=8):
    tok = toy_tokenizer()
    model = toy_model(
        tok,
        seed=0,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model.config.use_cache = False
    sae = SparseAutoencoder(32, d_sae, "topk", k=16)
    with torch.no_grad():
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(1))
        sae.W_dec.normal_(generator=torch.Generator().manual_seed(2))
    sae.requires_grad_(False)
    rows = tokenize_preference(gpoints_preferences(6, seed=0), tok, 128)
    collate = lambda rs: collate_preference(rs, tok.pad_token_id)
    return model, tok, sae, rows, collate, get_config("fpo", "toy", layer=layer, k=k)


@pytest.mark.parametrize("select,store", [("policy", "full"), ("union", "full"), ("reference", "topk")])
def test_ln2_at_init_and_offline_equals_online(tmp_path, select, store):
    model, tok, sae, rows, collate, cfg = setup_pipeline()
    cfg = cfg.replace(select=select)
    online = make_reference("copy", model)
    cached, path = precompute_fpo_reference(
        online, model, sae, 1, rows, collate, tmp_path, store=store, k=cfg.k
    )
    on_fn, off_fn = fpo_loss_fn(cfg, sae, online), fpo_loss_fn(cfg, sae, PrecomputedReference())
    b_on, b_off = collate(rows), with_cached_features(collate)(cached)
    assert torch.is_tensor(cached[0]["ref_chosen_" + ("feats" if store == "full" else "feat_values")])
    l_on, l_off = on_fn(model, b_on)[0], off_fn(model, b_off)[0]
    assert abs(l_on.item() - math.log(2)) < 1e-6 and abs(l_off.item() - math.log(2)) < 1e-6
    loss, m = off_fn(model, b_off)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    with torch.no_grad():  # and move the policy further from the reference, then compare again
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    m = off_fn(model, b_off)[1]
    l_on, l_off = on_fn(model, b_on)[0], off_fn(model, b_off)[0]
    assert l_on.item() != pytest.approx(math.log(2), abs=1e-4)
    assert m["feature_dev/rejected"] > 0
    torch.testing.assert_close(l_on, l_off, rtol=0, atol=1e-6)
    # the cache is reused, and keyed by the SAE: another SAE makes another file
    assert (
        precompute_fpo_reference(online, model, sae, 1, rows, collate, tmp_path, store=store, k=cfg.k)[1]
        == path
    )
    sae2 = SparseAutoencoder(32, 64, "topk", k=16)
    assert (
        precompute_fpo_reference(online, model, sae2, 1, rows, collate, tmp_path, store=store, k=cfg.k)[1]
        != path
    )


def test_policy_gradient_flows_through_the_frozen_sae():
    model, tok, sae, rows, collate, cfg = setup_pipeline()
    b = collate(rows)
    online = make_reference("copy", model)
    with torch.no_grad():  # move the policy so D > 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = fpo_loss_fn(cfg.replace(alpha=1.0), sae, online)(model, b)[0]
    loss.backward()
    assert all(p.grad is None for p in sae.parameters())
    g_with = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    fpo_loss_fn(cfg.replace(alpha=0.0), sae, online)(model, b)[0].backward()
    g_without = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert not torch.allclose(g_with, g_without)  # the feature term adds gradient through the SAE


def test_topk_cache_refuses_policy_select():
    p = torch.rand(2, 10)
    v, ix = p.topk(3, dim=1)
    b = {"ref_chosen_feat_values": v, "ref_chosen_feat_indices": ix}
    with pytest.raises(ValueError, match="select='reference'"):
        cached_feature_deviation(p, b, "chosen", 3, "policy")
    with pytest.raises(ValueError, match="k=4"):
        cached_feature_deviation(p, b, "chosen", 4, "reference")


def test_train_fpo_end_to_end(tmp_path):
    model, tok, sae, rows, collate, _ = setup_pipeline()
    save_sae(sae, tmp_path / "sae")
    cfg = get_config(
        "fpo",
        "toy",
        layer=1,
        k=8,
        sae_path=str(tmp_path / "sae"),
        n_train=16,
        n_eval=8,
        n_gen=0,
        max_steps=3,
        batch_size=4,
        log_every=1,
        out_dir=str(tmp_path / "run"),
        device="cpu",
        lr=1e-3,
    )
    out = train_fpo(cfg, model, tok)
    assert out["loss"] > 0 and math.isfinite(out["loss"])
    assert {"eval/pref_acc", "eval/entropy", "eval/feature_drift", "feature_dev/rejected"} <= set(out.summary)
    assert out["eval/feature_drift"] > 0
    assert list((tmp_path / "run" / "ref_cache").glob("fpo-ref-*.safetensors"))


def test_presets_and_cli(tmp_path, capsys):
    from alignbook.cli import main
    from alignbook.lm.sae import SparseAutoencoder

    gpu = get_config("fpo", "gpu")
    assert (gpu.model, gpu.layer, gpu.sae_release, gpu.sae_id) == (
        "google/gemma-2-2b",
        25,
        "gemma-scope-2b-pt-res-canonical",
        "layer_25/width_16k/canonical",
    )
    assert (gpu.beta, gpu.alpha, gpu.k, gpu.batch_size * gpu.grad_accum) == (0.1, 0.5, 50, 32)
    assert "ultrafeedback" in gpu.dataset
    toy = get_config("fpo", "toy")
    assert (toy.reference, toy.select, toy.feature_store) == ("precomputed", "policy", "full")
    sae = SparseAutoencoder(128, 64, "topk", k=8)  # the toy base has d = 128
    with torch.no_grad():
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(0))
    save_sae(sae, tmp_path / "sae")
    rc = main(
        [
            "train",
            "fpo",
            "--out",
            str(tmp_path / "run"),
            f"sae_path={tmp_path / 'sae'}",
            "max_steps=2",
            "n_train=8",
            "n_eval=4",
            "n_gen=0",
            "batch_size=4",
            "k=8",
            "device=cpu",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert '"eval/feature_drift"' in out and '"loss"' in out


def test_bench_arms_run():
    from alignbook.bench.fpo import run_arm

    spec = dict(
        steps=1,
        warmup=1,
        batch=2,
        max_length=128,
        threads=1,
        n=8,
        vocab=0,
        d_sae=64,
        k=8,
        sae_k=16,
        model_kw=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
    )
    fpo, simpo = run_arm("fpo", spec), run_arm("simpo", spec)
    for r in (fpo, simpo):
        assert r["time_per_step_s"] > 0 and r["peak_mem_mb"] >= 0 and "memory" in r
    assert fpo["precompute_s"] > 0
    assert fpo["cache_bytes_per_pair"] > 2 * 64 * 4  # two pooled vectors of F floats per pair


def test_pooled_features_equals_pool_of_encode():
    from alignbook.lm.fpo import pooled_features

    for act in ("topk", "relu", "jumprelu"):
        sae = SparseAutoencoder(8, 32, act, k=4)
        with torch.no_grad():
            sae.W_enc.normal_(generator=torch.Generator().manual_seed(0))
            if sae.threshold is not None:
                sae.threshold.fill_(0.3)
        h = torch.randn(4, 9, 8, generator=torch.Generator().manual_seed(1))
        mask = (torch.rand(4, 9, generator=torch.Generator().manual_seed(2)) > 0.4).long()
        mask[:, -1] = 1
        torch.testing.assert_close(pooled_features(sae, h, mask), pool_completion(sae.encode(h), mask))
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        pooled_features(sae, h[:1], torch.zeros(1, 9))
