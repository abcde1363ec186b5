import os, subprocess, sys
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from alignbook.config import Config, COMMON
from alignbook.models import toy_tokenizer, toy_model
from alignbook.data import tokenize_sft, collate_sft
from alignbook.lm.logps import sequence_logps
from alignbook.train import Trainer, NonFiniteError, read_metrics

HERE = Path(__file__).parent
tok = toy_tokenizer()
ROWS = tokenize_sft(
    [{"prompt": f"{a}*{b}=", "completion": str(a * b)} for a in range(8) for b in range(8)], tok, 32
)


def loss_fn(model, b):
    lp = sequence_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    return -lp.token_logps.sum() / lp.n_tokens.sum(), {"n": lp.n_tokens.sum()}


def make(out_dir=None, **kw):
    cfg = Config(
        {**COMMON, "objective": "t", "batch_size": 8, "lr": 3e-3, "max_steps": 8, "log_every": 1, **kw}
    )
    return Trainer(
        toy_model(tok, num_hidden_layers=1),
        cfg,
        loss_fn=loss_fn,
        train_data=ROWS,
        collate_fn=lambda rs: collate_sft(rs, tok.pad_token_id),
        out_dir=out_dir,
        weight_fn=lambda b: int(b["completion_mask"][:, 1:].sum()),
    )


def weights(t):
    return {n: p.detach().clone() for n, p in t.unwrapped.named_parameters()}


def test_exact_resume_is_bit_identical(tmp_path):
    a = make(tmp_path / "a", save_every=3)
    a.fit()
    b = make(tmp_path / "b", save_every=3)
    b.fit(until=5)  # "interrupted" after step 5, last checkpoint at 3
    c = make(tmp_path / "b", save_every=3)
    c.fit()
    wa, wc = weights(a), weights(c)
    assert all(torch.equal(wa[n], wc[n]) for n in wa)
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == list(range(1, 9))
    ck = sorted((tmp_path / "b").glob("checkpoint-*"))
    assert {p.name for p in ck} == {"checkpoint-6", "checkpoint-8"}  # only the last two kept
    assert (ck[0] / "model.safetensors").exists() and (ck[0] / "optimizer.pt").exists()


def test_keyboard_interrupt_saves_checkpoint(tmp_path):
    t = make(tmp_path, save_every=100)
    orig = t.train_step

    def boom():
        if t.step == 4:
            raise KeyboardInterrupt
        return orig()

    t.train_step = boom
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").exists()
    full = make(tmp_path / "ref")
    full.fit()
    r = make(tmp_path, save_every=100)
    r.fit()
    assert all(torch.equal(weights(full)[n], weights(r)[n]) for n in weights(full))


def test_loss_decreases():
    t = make(max_steps=25)
    t.fit()
    assert t.history[-1]["loss"] < 0.8 * t.history[0]["loss"]


def test_nan_guard():
    t = make(max_steps=2)
    t.loss_fn = lambda m, b: (loss_fn(m, b)[0] * float("inf"), {})
    with pytest.raises(NonFiniteError, match="non-finite loss .* at step 1"):
        t.fit()


def test_bad_batch_size():
    with pytest.raises(ValueError, match="fewer than one batch"):
        make(batch_size=1000)


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one.safetensors"
    two = tmp_path / "two.safetensors"
    subprocess.run(
        [sys.executable, str(HERE / "_ddp_train.py"), str(one)], check=True, env=env, capture_output=True
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            str(HERE / "_ddp_train.py"),
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys()
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-5), (n, (a[n] - b[n]).abs().max())


def test_lora_resume_and_only_adapters_train(tmp_path):
    from alignbook.models import add_lora

    def mk(out):
        cfg = Config(
            {
                **COMMON,
                "objective": "t",
                "batch_size": 8,
                "lr": 3e-3,
                "max_steps": 4,
                "log_every": 1,
                "save_every": 2,
            }
        )
        m = add_lora(toy_model(tok, num_hidden_layers=1), r=4, alpha=8)
        return Trainer(
            m,
            cfg,
            loss_fn=loss_fn,
            train_data=ROWS,
            collate_fn=lambda rs: collate_sft(rs, tok.pad_token_id),
            out_dir=out,
        )

    a = mk(tmp_path / "a")
    before = weights(a)
    a.fit()
    changed = {n for n, p in weights(a).items() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)  # the base stays frozen
    b = mk(tmp_path / "b")
    b.fit(until=2)
    c = mk(tmp_path / "b")
    c.fit()
    assert all(torch.equal(weights(a)[n], weights(c)[n]) for n in changed)


def test_param_groups_give_parts_their_own_lr(tmp_path):
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 1), "b": torch.nn.Linear(2, 1)})
    cfg = Config({**COMMON, "objective": "t", "batch_size": 2, "lr": 1e-3, "max_steps": 3, "warmup_steps": 0})
    groups = [{"params": list(model["a"].parameters())}, {"params": list(model["b"].parameters()), "lr": 0.5}]
    tr = Trainer(model, cfg, out_dir=tmp_path, param_groups=groups)
    assert [g["lr"] for g in tr.optimizer.param_groups] == [1e-3, 0.5]
    x = torch.ones(4, 2)
    (model["a"](x) + model["b"](x)).sum().backward()
    tr.optimizer_step()
    assert tr.scheduler.get_last_lr() == [1e-3, 0.5]
    tr.save_checkpoint()
    tr2 = Trainer(model, cfg, out_dir=tmp_path, param_groups=groups)
    assert tr2.resume() and [g["lr"] for g in tr2.optimizer.param_groups] == [1e-3, 0.5]
    with pytest.raises(ValueError, match="exactly one group"):
        Trainer(model, cfg, param_groups=groups[:1])
    with pytest.raises(ValueError, match="repeats a parameter"):
        Trainer(model, cfg, param_groups=[groups[0], groups[0], groups[1]])
