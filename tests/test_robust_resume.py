"Interrupted runs resume to the weights and metrics.jsonl rows of uninterrupted ones (issue 16, items 1, 6)."

import os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from alignbook.config import Config, COMMON
from alignbook.models import toy_tokenizer, toy_model
from alignbook.data import tokenize_sft, collate_sft
from alignbook.lm.logps import sequence_logps
from alignbook.train import Trainer, TrainingInterrupted, NonFiniteError, read_metrics

HERE = Path(__file__).parent
SLOW = pytest.mark.skipif(not os.environ.get("ALIGNBOOK_SLOW"), reason="slow (minutes): set ALIGNBOOK_SLOW=1")
MAX_STEPS, SAVE_EVERY, LOG_EVERY = 7, 3, 2
tok = toy_tokenizer()
ROWS = tokenize_sft(
    [{"prompt": f"{a}*{b}=", "completion": str(a * b)} for a in range(8) for b in range(8)], tok, 32
)


def loss_fn(model, b):
    lp = sequence_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    return -lp.token_logps.sum() / lp.n_tokens.sum(), {"n": lp.n_tokens.sum()}


def make(out_dir, **kw):
    "The same run as tests/_robust_worker.py (grad_accum=2, so a step has a middle)."
    cfg = Config(
        {
            **COMMON,
            "objective": "t",
            "batch_size": 8,
            "grad_accum": 2,
            "lr": 3e-3,
            "max_steps": MAX_STEPS,
            "log_every": LOG_EVERY,
            "save_every": SAVE_EVERY,
            **kw,
        }
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


def rows(out_dir):
    "metrics.jsonl without the wall-clock column (the one thing an interruption may change)."
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(out_dir)]


def assert_same(wa, wb):
    assert wa.keys() == wb.keys()
    bad = [n for n in wa if not torch.equal(wa[n], wb[n])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    t = make(d)
    t.fit()
    return weights(t), rows(d)


@pytest.mark.parametrize(
    "fault",
    [
        "step:2:INT",  # between steps
        "mid_step:3:INT",  # after the first of two micro-batches
        "update:4:INT",  # between optimizer.step() and scheduler.step()
        "checkpoint:3:INT",  # while checkpoint-3 is being written
        "checkpoint_done:6:INT",  # right after checkpoint-6 is renamed into place
        "log:4:INT",  # while the log line of step 4 is written
        "mid_step:5:TERM",
        "checkpoint:6:TERM",
    ],
)
def test_signal_stops_after_the_step_and_resumes_exactly(reference, tmp_path, monkeypatch, fault):
    monkeypatch.setenv("ALIGNBOOK_FAULT", fault)
    with pytest.raises(TrainingInterrupted) as e:
        make(tmp_path).fit()
    stopped = e.value.step
    assert stopped == int(fault.split(":")[1]), "the step in progress is finished, not abandoned"
    assert e.value.signum == getattr(signal, "SIG" + fault.split(":")[2])
    assert (tmp_path / f"checkpoint-{stopped}" / "manifest.json").exists()
    monkeypatch.delenv("ALIGNBOOK_FAULT")
    t = make(tmp_path)
    t.fit()
    assert_same(reference[0], weights(t))
    assert rows(tmp_path) == reference[1]


def test_second_signal_stops_at_once_and_loses_nothing(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNBOOK_FAULT", "mid_step:5:INT,mid_step:5:INT")
    with pytest.raises(KeyboardInterrupt) as e:
        make(tmp_path).fit()
    assert not isinstance(e.value, TrainingInterrupted)
    assert not (tmp_path / "checkpoint-5").exists() and (tmp_path / "checkpoint-3").exists()
    monkeypatch.delenv("ALIGNBOOK_FAULT")
    t = make(tmp_path)
    t.fit()
    assert_same(reference[0], weights(t))
    assert rows(tmp_path) == reference[1]


def test_keyboard_interrupt_inside_a_step_rewinds_the_data_position(reference, tmp_path):
    "A KeyboardInterrupt raised mid-step (no signal handler involved) saves the state at the step's start."
    t = make(tmp_path)
    orig = t.loss_fn

    def boom(model, b):
        if t.step == 4 and t.cursor.pos > 8:  # the second micro-batch of step 5
            raise KeyboardInterrupt
        return orig(model, b)

    t.loss_fn = boom
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert (tmp_path / "checkpoint-4").exists()
    r = make(tmp_path)
    r.fit()
    assert_same(reference[0], weights(r))
    assert rows(tmp_path) == reference[1]


def test_nan_keeps_a_finite_pre_divergence_checkpoint(tmp_path):
    ref = make(tmp_path / "four", max_steps=4)
    ref.fit()
    t = make(tmp_path / "nan")

    def diverging(model, b):
        loss, m = loss_fn(model, b)
        return (loss * float("nan"), m) if t.step == 4 else (loss, m)

    t.loss_fn = diverging
    with pytest.raises(
        NonFiniteError, match="at step 5.*checkpoint-4 holds the last finite weights.*lower lr"
    ):
        t.fit()
    sd = load_file(str(tmp_path / "nan" / "checkpoint-4" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in sd.values())
    assert_same({n: v for n, v in weights(ref).items()}, sd)
    assert not (tmp_path / "nan" / "checkpoint-5").exists()


def _worker(out, fault=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ALIGNBOOK_FAULT", None)
    if fault:
        env["ALIGNBOOK_FAULT"] = fault
    args = [
        sys.executable,
        str(HERE / "_robust_worker.py"),
        str(out),
        str(MAX_STEPS),
        str(SAVE_EVERY),
        str(LOG_EVERY),
    ]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_while_writing_a_checkpoint_resumes_exactly(reference, tmp_path):
    p = _worker(tmp_path, "checkpoint:6:KILL")
    _, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    assert (tmp_path / ".tmp-checkpoint-6").exists() and not (tmp_path / "checkpoint-6").exists()
    p = _worker(tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert not (tmp_path / ".tmp-checkpoint-6").exists()
    assert_same(reference[0], load_file(str(tmp_path / "final.safetensors")))
    assert rows(tmp_path) == reference[1]


@SLOW
def test_sigkill_anywhere_and_a_real_sigint_resume_exactly(reference, tmp_path):
    "kill -9 while writing a checkpoint, inside an update, before a log line; then a SIGINT from outside."
    for fault in ("checkpoint:3:KILL", "update:5:KILL", "log:6:KILL"):
        p = _worker(tmp_path, fault)
        _, err = p.communicate(timeout=300)
        assert p.returncode == -signal.SIGKILL, err[-2000:]
    assert not list(tmp_path.glob("checkpoint-6")) and (tmp_path / "checkpoint-3").exists()
    p = _worker(tmp_path)  # the harness itself sends SIGINT once the resumed run is training
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 300:
        lock = tmp_path / ".lock"
        if lock.exists() and f"process {p.pid} " in lock.read_text():
            time.sleep(0.3)  # somewhere in steps 4-7: the exact moment does not matter
            p.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = p.communicate(timeout=300)
    assert p.returncode in (0, 128 + signal.SIGINT), err[-2000:]
    assert "Traceback" not in err
    p = _worker(tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert_same(reference[0], load_file(str(tmp_path / "final.safetensors")))
    assert rows(tmp_path) == reference[1]


def test_signal_without_out_dir_stops_cleanly(monkeypatch):
    monkeypatch.setenv("ALIGNBOOK_FAULT", "step:3:INT")
    with pytest.raises(TrainingInterrupted, match="after step 3: no out_dir, nothing saved"):
        make(None).fit()
