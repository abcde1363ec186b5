"Tests for alignbook.lm.sae: encoders, metrics, residual capture, SAELens format and parity with SAELens."

import json, pytest, torch
import torch.nn.functional as F
from alignbook.lm.sae import (
    SparseAutoencoder,
    topk_relu,
    jump_relu,
    fit_sae,
    sae_metrics,
    save_sae,
    load_sae,
    load_saelens_sae,
    capture_residual,
    residual_activations,
    train_sae,
    sae_hash,
)
from alignbook.models import toy_tokenizer, toy_model


def random_sae(activation, d=12, n=40, k=5, b_dec_on_input=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = SparseAutoencoder(d, n, activation, k=k, b_dec_on_input=b_dec_on_input)
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if s.threshold is not None:
            s.threshold.copy_(torch.rand(n, generator=g) * 0.5)
    return s.requires_grad_(False)


def formula_encode(x, W_enc, b_enc, b_dec, activation, k=None, threshold=None, apply_b_dec=True):
    "SAELens's encoders written out: pre = (x − b_dec·flag) W_enc + b_enc, then TopK / ReLU / JumpReLU."
    pre = (x - b_dec * apply_b_dec) @ W_enc + b_enc
    if activation == "relu":
        return pre.relu()
    if activation == "jumprelu":
        return pre.relu() * (pre > threshold).float()
    out = torch.zeros_like(pre)
    for i, row in enumerate(pre):
        keep = row.argsort(descending=True)[:k]
        out[i, keep] = row[keep].relu()
    return out


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
@pytest.mark.parametrize("b_dec_on_input", [True, False])
def test_encode_matches_formula(activation, b_dec_on_input):
    s = random_sae(activation, b_dec_on_input=b_dec_on_input)
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(1))
    want = formula_encode(x, s.W_enc, s.b_enc, s.b_dec, activation, s.k, s.threshold, b_dec_on_input)
    torch.testing.assert_close(s.encode(x), want)
    torch.testing.assert_close(s(x), want @ s.W_dec + s.b_dec)
    if activation == "topk":
        assert ((s.encode(x) > 0).sum(-1) <= 5).all()


def test_activation_functions():
    pre = torch.tensor([[0.3, -2.0, 1.0, 0.9]])
    torch.testing.assert_close(topk_relu(pre, 2), torch.tensor([[0.0, 0.0, 1.0, 0.9]]))
    torch.testing.assert_close(topk_relu(-pre.abs(), 2), torch.zeros(1, 4))  # ReLU after the selection
    torch.testing.assert_close(jump_relu(pre, torch.full((4,), 0.95)), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


def test_bad_config():
    with pytest.raises(ValueError, match="`k`"):
        SparseAutoencoder(4, 8, "topk", k=9)
    with pytest.raises(ValueError, match="activation"):
        SparseAutoencoder(4, 8, "gelu")


def test_fit_and_metrics_on_known_features():
    g = torch.Generator().manual_seed(0)
    dirs = F.normalize(torch.randn(24, 8, generator=g), dim=-1)
    x = (torch.rand(3000, 24, generator=g) * (torch.rand(3000, 24, generator=g) < 2 / 24)) @ dirs
    s = SparseAutoencoder(8, 48, "topk", k=3)
    hist = fit_sae(s, x, steps=300, batch_size=256, lr=3e-3)
    m = sae_metrics(s, x)
    assert m["l0"] <= 3 and m["fve"] > 0.7, m
    assert hist[-1]["mse"] < hist[0]["mse"]
    torch.testing.assert_close(s.W_dec.norm(dim=-1), torch.ones(48))  # decoder rows kept unit norm


def test_dead_features_and_fve_definition():
    s = random_sae("relu", d=6, n=10)
    with torch.no_grad():
        s.b_enc[:3] = -1e6  # three features can never fire
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(2))
    m = sae_metrics(s, x)
    fired = (s.encode(x) > 0).any(0)
    assert m["n_dead"] == int((~fired).sum()) >= 3
    want = 1 - (s(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert abs(m["fve"] - want.item()) < 1e-5
    assert abs(m["l0"] - (s.encode(x) > 0).float().sum(-1).mean().item()) < 1e-5


def small_model():
    tok = toy_tokenizer()
    m = toy_model(
        tok,
        seed=0,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return m.eval(), tok


def test_capture_residual_is_the_block_output():
    m, tok = small_model()
    ids = torch.tensor([tok("Cards: 1 2 3 4").input_ids])
    with capture_residual(m, 1) as hs:
        out = m(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(hs[-1], out.hidden_states[2])  # hidden_states[0] is the embedding
    with pytest.raises(ValueError, match="`layer`"):
        with capture_residual(m, 3):
            pass
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert residual_activations(m, [b], 0).shape == (ids.shape[1], 32)


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_save_load_roundtrip(tmp_path, activation):
    s = random_sae(activation, b_dec_on_input=activation != "jumprelu")
    save_sae(s, tmp_path / "s", hook_name="blocks.1.hook_resid_post")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}[activation]
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    back = load_sae(tmp_path / "s")
    x = torch.randn(9, 12)
    torch.testing.assert_close(back.encode(x), s.encode(x))
    assert sae_hash(back) == sae_hash(s)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path)


def test_sae_hash_changes_with_weights():
    a, b = random_sae("topk", seed=0), random_sae("topk", seed=1)
    assert sae_hash(a) != sae_hash(b)


def test_train_sae_saves_a_loadable_sae(tmp_path):
    from alignbook.config import get_config

    m, tok = small_model()
    cfg = get_config(
        "sae",
        "toy",
        layer=1,
        d_sae=64,
        k=4,
        n_pairs=8,
        max_steps=20,
        sae_batch_size=64,
        out_dir=str(tmp_path),
        device="cpu",
    )
    out = train_sae(cfg, m, tok)
    assert out["eval/l0"] <= 4 and 0 <= out["eval/dead_frac"] <= 1
    s = load_sae(out["sae_path"])
    assert (s.d_in, s.d_sae, s.activation) == (32, 64, "topk")


# --- parity with SAELens (dev extra; skipped when sae-lens is absent) ---------------------------------------
def _saelens_twin(s):
    sl = pytest.importorskip("sae_lens")
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    kw = dict(d_in=s.d_in, d_sae=s.d_sae, apply_b_dec_to_input=s.b_dec_on_input)
    twin = {
        "topk": lambda: TopKSAE(TopKSAEConfig(k=s.k, **kw)),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(**kw)),
        "relu": lambda: StandardSAE(StandardSAEConfig(**kw)),
    }[s.activation]()
    twin.load_state_dict({k: v.clone() for k, v in s.state_dict().items()})
    return sl, twin


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
@pytest.mark.parametrize("b_dec_on_input", [True, False])
def test_parity_with_saelens(activation, b_dec_on_input):
    s = random_sae(activation, b_dec_on_input=b_dec_on_input)
    _, twin = _saelens_twin(s)
    x = torch.randn(25, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), twin.encode(x))
        torch.testing.assert_close(s.decode(s.encode(x)), twin.decode(twin.encode(x)))


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_load_through_saelens_from_local_dir(tmp_path, activation):
    s = random_sae(activation, b_dec_on_input=activation == "topk")
    _, twin = _saelens_twin(s)
    twin.save_model(tmp_path / "sl")  # written by SAELens itself
    ours = load_saelens_sae(path=tmp_path / "sl")  # the gpu preset's loading path, on a local directory
    x = torch.randn(7, 12)
    torch.testing.assert_close(ours.encode(x), s.encode(x))
    torch.testing.assert_close(load_sae(tmp_path / "sl").encode(x), s.encode(x))  # and without SAELens
    save_sae(s, tmp_path / "ours")
    from sae_lens import SAE

    with torch.no_grad():
        torch.testing.assert_close(SAE.load_from_disk(str(tmp_path / "ours")).encode(x), s.encode(x))


def test_load_saelens_needs_a_source():
    pytest.importorskip("sae_lens")
    with pytest.raises(ValueError, match="path"):
        load_saelens_sae()


def test_cli_train_sae(tmp_path, capsys):
    from alignbook.cli import main

    rc = main(
        ["train", "sae", "--out", str(tmp_path), "max_steps=5", "n_pairs=4", "d_sae=64", "k=4", "device=cpu"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert '"eval/fve"' in out and '"sae_path"' in out and "SparseAutoencoder" not in out
    assert load_sae(tmp_path / "sae").d_in == 128  # the toy base's residual width
