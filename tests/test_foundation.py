"Config, data formats, log-probs, SFT loss and the CLI: library behaviour."

import io, json, contextlib, math
import pytest, torch
from datasets import Dataset
from alignbook.config import get_config, parse_overrides
from alignbook.models import toy_tokenizer, toy_model
from alignbook.data import (
    DataFormatError,
    validate_dataset,
    tokenize_sft,
    tokenize_preference,
    tokenize_unpaired,
    collate_sft,
    collate_preference,
)
from alignbook.lm.logps import selective_log_softmax, sequence_logps
from alignbook.lm.sft import sft_loss
from alignbook.cli import main

tok = toy_tokenizer()


# --- config -------------------------------------------------------------------------------------------------
def test_presets_and_overrides(monkeypatch):
    c = get_config("sft", "toy", lr=1e-4)
    assert (c.preset, c.model, c.lr, c.mixed_precision) == ("toy", "toy-base", 1e-4, "no")
    g = get_config("sft", "gpu")
    assert g.mixed_precision == "bf16" and "/" in g.model and g.lora
    monkeypatch.setenv("ALIGNBOOK_PRESET", "gpu")
    assert get_config("sft", "toy").preset == "gpu"  # the environment wins over the notebook cell


def test_config_errors_list_valid_choices():
    with pytest.raises(ValueError, match="valid presets: toy, gpu"):
        get_config("sft", "cpu")
    with pytest.raises(ValueError, match="valid keys: .*batch_size"):
        get_config("sft", "toy", batchsize=3)
    with pytest.raises(ValueError, match="valid objectives: .*sft"):
        get_config("sfft")
    with pytest.raises(KeyError, match="valid keys"):
        get_config("sft").replace(nope=1)


def test_parse_overrides():
    assert parse_overrides(["a=1", "b=true", "c=null", "d=x/y", "e=[1, 2]", "f=1e-5"]) == {
        "a": 1,
        "b": True,
        "c": None,
        "d": "x/y",
        "e": [1, 2],
        "f": 1e-5,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


# --- data formats: one test per mistake ------------------------------------------------------------------------
def conv(p, c):
    return {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}


@pytest.mark.parametrize(
    "rows,kind,match",
    [
        ([{"prompt": "a", "answer": "b"}], "sft", r"missing \['completion'\]"),
        (
            [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "  "}],
            "sft",
            r"row 1, field 'completion': empty text",
        ),
        ([{"prompt": "a", "completion": 7}], "sft", r"row 0, field 'completion': expected a string"),
        ([{"prompt": "a", "chosen": "b", "rejected": ""}], "preference", r"row 0, field 'rejected': empty"),
        (
            [{"prompt": "a", "completion": "b", "label": "yes"}],
            "unpaired",
            r"row 0, field 'label': expected True",
        ),
        (
            [{"prompt": [{"role": "user"}], "completion": "b"}],
            "sft",
            r"row 0, field 'prompt', message 0: expected a dict with 'role' and 'content'",
        ),
        (
            [conv("a", "b"), {"prompt": "a", "completion": "b"}],
            "sft",
            r"row 1: is standard but earlier rows are conversational",
        ),
        ([], "sft", r"missing|empty"),
    ],
)
def test_validation_errors_name_row_field_fix(rows, kind, match):
    with pytest.raises(DataFormatError, match=match):
        validate_dataset(rows, kind)


def test_prompt_longer_than_max_length():
    with pytest.raises(
        DataFormatError,
        match=r"row 0, field 'prompt': \d+ tokens, not shorter than max_length=20; raise max_length",
    ):
        tokenize_sft([conv("x" * 40, "y")], tok, 20)


def test_tokenizer_without_pad_token():
    t = toy_tokenizer()
    t.pad_token = None
    with pytest.raises(DataFormatError, match="no pad token: set `tokenizer.pad_token"):
        tokenize_sft([conv("a", "b")], t, 64)


def test_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds"):
        validate_dataset([conv("a", "b")], "dpo")


def test_tokenize_and_collate_shapes():
    ds = Dataset.from_list([conv("2+3?", "5"), conv("10-4?", "six")])
    rows = tokenize_sft(ds, tok, 64)
    b = collate_sft(rows, tok.pad_token_id)
    assert b["input_ids"].shape == b["completion_mask"].shape == b["attention_mask"].shape
    assert b["completion_mask"].sum(1).tolist() == [2, 4]  # completion + end-of-turn token
    assert tok.decode(b["input_ids"][1][b["completion_mask"][1].bool()]) == "six<|end|>"
    u = collate_sft(
        tokenize_unpaired([{**conv("a", "b"), "label": True}, {**conv("c", "d"), "label": False}], tok, 64),
        tok.pad_token_id,
    )
    assert u["label"].tolist() == [True, False]
    long = tokenize_sft([conv("ab", "x" * 100)], tok, 30)[0]
    assert len(long["input_ids"]) == 30  # completion truncated, prompt kept


# --- log-probs ------------------------------------------------------------------------------------------------
def test_selective_log_softmax_matches_naive_and_bf16():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 7, 50, generator=g) * 5
    i = torch.randint(0, 50, (2, 7), generator=g)
    naive = z.log_softmax(-1).gather(-1, i[..., None])[..., 0]
    assert torch.allclose(selective_log_softmax(z, i), naive, atol=1e-5)
    zb = z.bfloat16()
    assert torch.allclose(
        selective_log_softmax(zb, i), zb.float().log_softmax(-1).gather(-1, i[..., None])[..., 0], atol=1e-5
    )


def test_concatenated_forward_equals_separate():
    model = toy_model(tok, seed=1)
    pairs = [
        {"prompt": "Compute 2+3.", "chosen": "5", "rejected": "six"},
        {"prompt": "Reverse: abcdef.", "chosen": "fedcba", "rejected": "abc"},
    ]
    rows = tokenize_preference(pairs, tok, 64)
    b = collate_preference(rows, tok.pad_token_id)
    with torch.no_grad():
        ch, rj = sequence_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"]).chunk2()
        for side, want in (("chosen", ch), ("rejected", rj)):
            s = collate_sft(
                [{"input_ids": r[f"{side}_ids"], "completion_mask": r[f"{side}_mask"]} for r in rows],
                tok.pad_token_id,
            )
            got = sequence_logps(model, s["input_ids"], s["attention_mask"], s["completion_mask"])
            assert torch.allclose(got.sum, want.sum, atol=1e-4) and torch.equal(got.n_tokens, want.n_tokens)
            assert torch.allclose(got.avg, want.sum / want.n_tokens, atol=1e-5)


# --- SFT -------------------------------------------------------------------------------------------------------
def test_sft_loss_is_mean_nll_and_lowers_with_probability():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.9]]))
    m = torch.tensor([[1, 1, 0]])
    assert math.isclose(float(sft_loss(lp, m)), math.log(2), rel_tol=1e-6)
    assert float(sft_loss(torch.log(torch.tensor([[0.9, 0.9, 0.9]])), m)) < math.log(2)


def test_cli_train_sft_lowers_loss(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            [
                "train",
                "sft",
                "--preset",
                "toy",
                "--out",
                str(tmp_path),
                "max_steps=30",
                "n_train=960",
                "eval_size=0",
                "log_every=10",
                "save_every=15",
            ]
        )
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[-1]["loss"] < rows[0][
        "loss"
    ]  # averaged over 10 steps each
    assert (tmp_path / "final" / "model.safetensors").exists() and (
        tmp_path / "checkpoint-30" / "optimizer.pt"
    ).exists()
    assert json.loads((tmp_path / "config.json").read_text())["max_steps"] == 30


def test_cli_errors():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "nope"]) == 2
    assert "valid objectives" in err.getvalue()


def test_gpu_preset_loads_local_checkpoint_with_lora(tmp_path):
    "The gpu preset's loading path (Hub-style directory, LoRA, paper prompts), on a local save_pretrained model."
    from alignbook.lm.sft import train_sft

    model_dir = tmp_path / "tiny-instruct"
    toy_model(tok, max_position_embeddings=2048, num_hidden_layers=1).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cfg = get_config(
        "sft",
        "gpu",
        model=str(model_dir),
        max_steps=2,
        batch_size=2,
        grad_accum=2,
        n_train=8,
        eval_size=0,
        out_dir=str(tmp_path / "run"),
        log_every=1,
        save_every=0,
        warmup_steps=0,
        lr=1e-3,
    )
    assert cfg.lora and cfg.prompt_style == "paper" and cfg.mixed_precision == "bf16"
    out = train_sft(cfg)
    assert out["steps"] == 2 and math.isfinite(out["loss"])
    from alignbook.models import load_causal_lm

    merged = load_causal_lm(str(tmp_path / "run" / "final"))  # LoRA merged into a plain checkpoint
    assert not any("lora" in n for n, _ in merged.named_parameters())
