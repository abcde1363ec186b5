"The command line on bad overrides, bad data, refused runs, NaN and signals: exit codes and messages (issue 16)."

import contextlib, dataclasses, io, json, os
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from alignbook.cli import (
    main,
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_REFUSED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    FINISHED,
)
from alignbook.config import OBJECTIVES, register_objective, get_config
from test_robust_resume import make, loss_fn


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "override,says",
    [
        ("lr=abc", "lr='abc': expected a number, e.g. lr=0.0005"),
        ("batch_size=0", "batch_size=0: expected an integer >= 1, e.g. batch_size=32"),
        ("grad_accum=0", "grad_accum=0: expected an integer >= 1"),
        ("n_train=0", "n_train=0: expected an integer >= 1"),
        ("lora=maybe", "lora='maybe': expected true or false, e.g. lora=false"),
        ("save_every=-1", "save_every=-1: expected a number >= 0"),
        ("max_steps=2.5", "max_steps=2.5: expected an integer"),
        (
            "dataset=gpoints-xx",
            "dataset=gpoints-xx: unknown synthetic dataset; valid names: gpoints, gpoints-id",
        ),
        ("lerning_rate=1", "unknown config key(s) ['lerning_rate']"),
    ],
)
def test_bad_override_exits_2_before_anything_loads(tmp_path, override, says):
    code, _, err = run("train", "sft", "--out", str(tmp_path), override)
    assert code == EXIT_BAD_INPUT and says in err, err
    assert not (tmp_path / "config.json").exists()  # nothing was started


def test_beta_must_not_be_negative(tmp_path):
    code, _, err = run("train", "dpo", "--out", str(tmp_path), "beta=-1")
    assert code == EXIT_BAD_INPUT and "beta=-1: expected a number >= 0, e.g. beta=0.1" in err, err


GOOD = '{"prompt": "2+3=", "completion": "5"}\n{"prompt": "1+1=", "completion": "2"}\n'
BAD_FILES = {
    "latin1.jsonl": ('{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin1"), "line 1: not UTF-8 text"),
    "cut.jsonl": ((GOOD + '{"prompt": "4+4=", "comp').encode(), "line 3: the JSON is cut off"),
    "empty.jsonl": (b"", "the file is empty"),
    "types.jsonl": ((GOOD + '{"prompt": "3+3=", "completion": 6}\n').encode(), "line 3, field 'completion'"),
    "missing.jsonl": (None, "no such file or directory"),
    "nodata": ("dir", "a directory without data files"),
}


@pytest.mark.parametrize("objective", ["sft", "dpo", "kto", "orpo", "diffusion-dpo", "mapo"])
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_data_exits_2_naming_file_and_line(tmp_path, objective, name):
    data, says = BAD_FILES[name]
    p = tmp_path / name
    if data == "dir":
        p.mkdir()
        (p / "README.txt").write_text("no data here")
    elif data is not None:
        p.write_bytes(data)
    code, _, err = run("train", objective, "--out", str(tmp_path / "run"), f"dataset={p}")
    assert code == EXIT_BAD_INPUT, err
    assert str(p) in err and says in err, err


def test_sft_trains_from_a_jsonl_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n"
            for a in range(4)
            for b in range(4)
        )
    )
    code, out, err = run(
        "train",
        "sft",
        "--out",
        str(tmp_path / "run"),
        f"dataset={p}",
        "max_steps=1",
        "batch_size=4",
        "eval_size=0",
    )
    assert code == 0, err
    assert json.loads(out)["summary"]["steps"] == 1  # the CLI prints a TrainResult: out_dir, final_path, summary


def _saved_run(d: Path, objective="sft", finished=True, **kw):
    "A run folder as a finished `alignbook train` leaves it (without training anything)."
    cfg = get_config(objective, "toy", out_dir=str(d), **kw)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, default=str))
    (d / f"checkpoint-{cfg.max_steps}").mkdir()
    if finished:
        (d / FINISHED).write_text(json.dumps({"objective": objective, "max_steps": cfg.max_steps}))


def test_rerunning_a_finished_run_says_how_to_train_further(tmp_path):
    _saved_run(tmp_path, max_steps=3)
    code, _, err = run("train", "sft", "--out", str(tmp_path), "max_steps=3")
    assert (
        code == EXIT_REFUSED and "is finished" in err and "raise max_steps" in err and "max_steps=6" in err
    ), err


def test_changed_config_is_refused_with_the_differing_keys(tmp_path):
    _saved_run(tmp_path, finished=False, max_steps=3)
    code, _, err = run(
        "train", "sft", "--out", str(tmp_path), "max_steps=3", "lr=0.01", "seed=1", "batch_size=16"
    )
    assert code == EXIT_REFUSED, err
    for line in (
        "lr: saved 0.0005, now 0.01",
        "seed: saved 0, now 1",
        "batch_size: saved 32, now 16",
        "--force-config",
    ):
        assert line in err, err


def test_another_objective_on_a_run_folder_is_refused(tmp_path):
    _saved_run(tmp_path)
    code, _, err = run("train", "dpo", "--out", str(tmp_path))
    assert code == EXIT_REFUSED and "holds a 'sft' run" in err and "model=" in err, err
    code, _, err = run("train", "dpo", "--out", str(tmp_path), "--force-config")
    assert code == EXIT_REFUSED, err  # no flag mixes two objectives in one folder


@dataclasses.dataclass
class FakeResult:
    out_dir: str
    final_path: str
    summary: dict
    history: list


@pytest.fixture
def toy_objectives():
    "Objectives that train the toy Trainer of test_robust_resume: a NaN at step 3, and a plain run."

    def nan_at_3(cfg):
        t = make(cfg.out_dir, max_steps=6, save_every=0)
        t.loss_fn = lambda m, b: (loss_fn(m, b)[0] * (float("nan") if t.step == 2 else 1.0), {})
        t.fit()

    def plain(cfg):
        t = make(cfg.out_dir, max_steps=4)
        last = t.fit()
        return FakeResult(str(t.out_dir), "", {"loss": torch.tensor(last["loss"])}, t.history)

    register_objective("_nan_test", nan_at_3)
    register_objective("_plain_test", plain)
    yield
    del OBJECTIVES["_nan_test"], OBJECTIVES["_plain_test"]


def test_nan_exits_3_naming_step_and_remedy_and_keeps_finite_weights(tmp_path, toy_objectives):
    code, _, err = run("train", "_nan_test", "--out", str(tmp_path))
    assert code == EXIT_DIVERGED, err
    assert "non-finite loss nan at step 3" in err and "lower lr" in err, err
    sd = load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in sd.values())


@pytest.mark.parametrize("sig,code", [("INT", EXIT_SIGINT), ("TERM", EXIT_SIGTERM)])
def test_signal_exits_with_its_code_and_the_rerun_resumes(tmp_path, toy_objectives, monkeypatch, sig, code):
    monkeypatch.setenv("ALIGNBOOK_FAULT", f"mid_step:2:{sig}")
    got, _, err = run("train", "_plain_test", "--out", str(tmp_path))
    assert got == code and "after step 2" in err and "run the same command again" in err, err
    monkeypatch.delenv("ALIGNBOOK_FAULT")
    got, out, err = run("train", "_plain_test", "--out", str(tmp_path))
    assert got == 0, err
    printed = json.loads(out)  # a dataclass result printed generically: tensors as floats, no history
    assert set(printed) == {"out_dir", "final_path", "summary"} and isinstance(
        printed["summary"]["loss"], float
    )
    assert os.path.exists(tmp_path / FINISHED)


def test_image_preferences_from_a_jsonl_of_image_paths(tmp_path):
    from PIL import Image
    from alignbook.diffusion.prefs import load_pickapic

    for i in range(2):
        Image.new("L", (8, 8), 100 * i).save(tmp_path / f"{i}.png")
    rec = {"jpg_0": "0.png", "jpg_1": "1.png", "label_0": 1, "label_1": 0, "caption": "a digit"}
    (tmp_path / "p.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "jpg_1": "2.png"}) + "\n")
    with pytest.raises(ValueError, match="row 1, field 'jpg_1': image file .*2.png not found"):
        load_pickapic(tmp_path / "p.jsonl")
    (tmp_path / "p.jsonl").write_text(json.dumps(rec) + "\n")
    ds = load_pickapic(tmp_path / "p.jsonl")
    assert len(ds) == 1 and ds[0]["jpg_0"][:4] == b"\x89PNG"
