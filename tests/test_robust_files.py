"Damaged checkpoints and logs, atomic writes and the run lock (issue 16, items 2 and 3)."

import os, signal, subprocess, sys, time
import pytest, torch
from alignbook.train import RunLock, RunRefused, checkpoint_problem, read_metrics, atomic_write
from test_robust_resume import make, weights, rows, assert_same


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    "An uninterrupted 8-step run (the reference for every fallback below)."
    d = tmp_path_factory.mktemp("eight")
    t = make(d, max_steps=8, save_every=2, log_every=1)
    t.fit()
    return weights(t), rows(d)


def six(d):
    "A finished 6-step run: checkpoints 4 and 6 kept."
    make(d, max_steps=6, save_every=2, log_every=1).fit()
    return d / "checkpoint-6"


def damage_truncate(ck):
    p = ck / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    return "model.safetensors has 100 bytes"


def damage_empty(ck):
    (ck / "optimizer.pt").write_bytes(b"")
    return "optimizer.pt has 0 bytes"


def damage_flip(ck):
    p = ck / "model.safetensors"
    b = bytearray(p.read_bytes())
    b[-5] ^= 0xFF
    p.write_bytes(bytes(b))
    return "model.safetensors fails its SHA-256 check"


def damage_manifest(ck):
    (ck / "manifest.json").write_text('{"files": {"model.safe')
    return "manifest.json is damaged"


def damage_state(ck):
    (ck / "trainer_state.json").unlink()
    return "trainer_state.json is missing"


@pytest.mark.parametrize(
    "damage", [damage_truncate, damage_empty, damage_flip, damage_manifest, damage_state]
)
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(eight, tmp_path, capsys, damage):
    ck = six(tmp_path)
    says = damage(ck)
    assert says in checkpoint_problem(ck)
    t = make(tmp_path, max_steps=8, save_every=2, log_every=1)
    t.fit()  # resumes from checkpoint-4, not from the damaged checkpoint-6
    err = capsys.readouterr().err
    assert "checkpoint-6 is damaged" in err and says in err, err
    assert (tmp_path / "checkpoint-6.damaged").exists()
    assert_same(eight[0], weights(t))
    assert rows(tmp_path) == eight[1]


def test_an_empty_checkpoint_directory_is_skipped(eight, tmp_path, capsys):
    six(tmp_path)
    (tmp_path / "checkpoint-7").mkdir()
    t = make(tmp_path, max_steps=8, save_every=2, log_every=1)
    t.fit()
    assert "checkpoint-7 is damaged (model.safetensors is missing or empty)" in capsys.readouterr().err
    assert_same(eight[0], weights(t))


def test_half_written_metrics_line_is_dropped_with_a_message(eight, tmp_path, capsys):
    six(tmp_path)
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 7, "loss": 0.12')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert "dropped its half-written last line" in capsys.readouterr().err
    t = make(tmp_path, max_steps=8, save_every=2, log_every=1)
    t.fit()
    assert rows(tmp_path) == eight[1]
    assert_same(eight[0], weights(t))


def test_every_checkpoint_has_a_manifest_and_no_temporary_files_remain(tmp_path):
    six(tmp_path)
    for ck in ("checkpoint-4", "checkpoint-6"):
        assert checkpoint_problem(tmp_path / ck) is None
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_atomic_write_leaves_old_or_new(tmp_path):
    p = atomic_write(tmp_path / "a.json", "old")
    atomic_write(p, "new")
    assert p.read_text() == "new" and [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_a_second_process_is_refused_and_a_dead_one_leaves_no_stale_lock(tmp_path):
    code = "import sys, time; from alignbook.train import RunLock; RunLock(sys.argv[1]).acquire(); "
    code += "print('locked', flush=True); time.sleep(600)"
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunRefused, match=f"is in use: process {p.pid} .*choose another --out"):
            RunLock(tmp_path).acquire()
        t = make(tmp_path)
        with pytest.raises(RunRefused):
            t.fit()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with RunLock(tmp_path):  # the OS dropped the dead process's lock
        with RunLock(tmp_path):  # and one process may re-enter its own
            pass


def test_resume_refuses_a_changed_config_unless_forced(tmp_path):
    make(tmp_path, max_steps=2, save_every=2).fit()
    with pytest.raises(RunRefused, match=r"different config \(lr: 0.003 → 0.01\).*--force-config"):
        make(tmp_path, max_steps=4, lr=1e-2).fit()
    make(tmp_path, max_steps=4, save_every=1, log_every=3).fit()  # bookkeeping keys may change
    t = make(tmp_path, max_steps=5, lr=1e-2, force_config=True)
    t.fit()
    assert t.step == 5
    with pytest.raises(RunRefused, match="saved by a 't' run and this is a 'dpo' run"):
        make(tmp_path, max_steps=6, objective="dpo").fit()


def test_finished_run_returns_at_once(tmp_path):
    make(tmp_path, max_steps=3).fit()
    t = make(tmp_path, max_steps=3)
    t0 = time.perf_counter()
    last = t.fit()
    assert t.step == 3 and last["step"] == 3 and time.perf_counter() - t0 < 5
    assert [r["step"] for r in read_metrics(tmp_path)].count(3) == 1  # no second final row
    assert os.path.exists(tmp_path / "checkpoint-3")
    assert torch.is_tensor(next(iter(weights(t).values())))
