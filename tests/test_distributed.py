"""Data parallelism on CPU (gloo): N processes give the losses and weights of one process at the same global
batch, for SFT, DPO, GRPO, PPO and Diffusion-DPO (RL rounds split across processes), launched by
`alignbook train --num-processes` (issue 14).
Each pair of runs takes 30–90 s on two cores: they run with ALIGNBOOK_SLOW=1, the launcher checks always."""

import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from safetensors.torch import load_file
from alignbook.cli import parser, launch_train_argv
from alignbook.launch import LAUNCH_CONFIGS, launch_argv, launch_config

SLOW = pytest.mark.skipif(not os.environ.get("ALIGNBOOK_SLOW"), reason="slow (minutes): set ALIGNBOOK_SLOW=1")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# RL splits each round across processes (each plays its share of the hands): one sampling stream per episode
SHARDED = ["rollout_seeding=episode", "num_minibatches=2"]
# each objective a few steps at a global batch of 8 (4 rows a process), with little evaluation
RUNS = {
    # lr 1e-4, not the toy's 5e-4: Adam turns a rounding-level gradient into an update of up to lr, and at
    # 5e-4 one of SFT's million weights came out 4e-5 apart (losses and gradient norms still agreed)
    "sft": ["max_steps=3", "batch_size=8", "eval_size=4", "lr=1e-4"],
    "dpo": ["max_steps=3", "batch_size=8", "eval_size=4"],
    "grpo": ["max_steps=2", "batch_size=8", "hands_per_step=4", "group_size=4", "eval_size=4", *SHARDED],
    "ppo": ["max_steps=2", "batch_size=8", "hands_per_step=4", "group_size=4", "eval_size=4", *SHARDED]
    + ["max_attempts=2"],  # PPO's credit across turns
    "online-dpo": ["max_steps=2", "batch_size=4", "hands_per_step=4", "group_size=4", "eval_size=4"]
    + SHARDED[:1],  # online DPO's pairs split across processes
    "rewriter": ["max_steps=2", "problems_per_step=4", "group_size=2", "batch_size=4", "n_train=16"]
    + ["max_new_tokens=32", *SHARDED[:1]],  # the rewriting agent's problems split across processes
    "diffusion-dpo": ["max_steps=3", "batch_size=8", "eval_size=20", "beta=250"],
}


def train(
    objective: str, out: Path, n: int, *overrides: str, port: int = 29611
) -> subprocess.CompletedProcess:
    "Run `alignbook train` on `n` processes (through its own launcher when n > 1); fail with its stderr."
    launch = ["--num-processes", str(n), "--main-process-port", str(port)] if n > 1 else []
    cmd = [sys.executable, "-m", "alignbook.cli", "train", objective, "--out", str(out), *launch]
    r = subprocess.run(
        cmd + ["log_every=1", "device=cpu", *overrides], env=ENV, capture_output=True, text=True, timeout=1800
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def losses(out: Path, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def weights(out: Path) -> dict:
    files = sorted((out / "final").glob("*.safetensors"))
    assert files, f"no weights in {out / 'final'}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def assert_same_run(a: Path, b: Path, atol: float = 1e-5):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) and la, (la, lb)
    assert torch.allclose(torch.tensor(la), torch.tensor(lb), rtol=1e-5, atol=atol), (la, lb)
    # Adam is blind to a gradient's scale, so a loss share counted twice would leave the weights alike:
    # the gradient norms (before clipping) are not blind to it
    ga, gb = losses(a, "grad_norm"), losses(b, "grad_norm")
    assert len(ga) == len(gb) and ga, (ga, gb)
    assert torch.allclose(torch.tensor(ga), torch.tensor(gb), rtol=1e-4, atol=atol), (ga, gb)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= atol, f"weights differ by up to {worst}"


def test_shipped_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    kinds = {n: load_config_from_file(str(launch_config(n))) for n in LAUNCH_CONFIGS}
    assert kinds["ddp"].distributed_type == DistributedType.MULTI_GPU
    fsdp = kinds["fsdp"].fsdp_config
    assert kinds["fsdp"].distributed_type == DistributedType.FSDP
    assert (fsdp["fsdp_version"], fsdp["fsdp_auto_wrap_policy"], fsdp["fsdp_state_dict_type"]) == (
        2,
        "TRANSFORMER_BASED_WRAP",
        "FULL_STATE_DICT",
    )
    assert [kinds[n].deepspeed_config["zero_stage"] for n in ("zero2", "zero3")] == [2, 3]
    assert kinds["multi_node"].num_machines == 2
    assert (launch_config("ddp").parent / "multi_node.slurm").is_file()


def test_config_resolution(tmp_path):
    assert launch_config("zero3.yaml") == launch_config("zero3")
    mine = tmp_path / "fsdp.yaml"
    mine.write_text("distributed_type: FSDP\n")
    assert launch_config(mine) == mine.resolve()
    for bad in ("zero4", str(tmp_path / "nope.yaml"), str(tmp_path)):
        with pytest.raises(ValueError, match="accelerate-config"):
            launch_config(bad)


def test_argv():
    argv = launch_argv(["sft", "--out", "o"], 4, "zero2", main_process_port=29700, python="py")
    assert argv[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--config_file") + 1] == str(launch_config("zero2"))
    assert argv[argv.index("--num_processes") + 1] == "4"
    assert argv[argv.index("--main_process_port") + 1] == "29700"
    assert argv[-6:] == ["-m", "alignbook.cli", "train", "sft", "--out", "o"]
    assert launch_argv(["sft"], 2)[4] == str(launch_config("ddp"))  # ddp unless told otherwise
    with pytest.raises(ValueError, match="--num-processes"):
        launch_argv(["sft"], 0)


def test_cli_argv_keeps_the_run():
    args = parser().parse_args(["train", "dpo", "beta=0.3", "--num-processes", "2", "--force-config"])
    argv = launch_train_argv(args)
    tail = argv[argv.index("alignbook.cli") + 1 :]
    assert tail[:4] == ["train", "dpo", "--preset", "toy"]
    out = tail[tail.index("--out") + 1]
    assert out.startswith("runs/dpo-toy-")  # chosen once, here, for every process
    assert tail[-2:] == ["--force-config", "beta=0.3"]


def test_launched_process_needs_out(monkeypatch):
    from alignbook.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "sft", "max_steps=1"]) == 2  # EXIT_BAD_INPUT: --out is required
    assert main(["train", "sft", "--num-processes", "2", "--out", "x"]) == 2  # no launch inside a launch


@SLOW
@pytest.mark.parametrize("objective", list(RUNS))
def test_two_processes_match_one(objective, tmp_path):
    port = 29620 + list(RUNS).index(objective)
    train(objective, tmp_path / "one", 1, *RUNS[objective])
    r = train(objective, tmp_path / "two", 2, *RUNS[objective], port=port)
    assert "accelerate.commands.launch" in r.stderr  # it went through the launcher
    assert r.stdout.count('"steps"') == 1  # one process prints the result
    assert_same_run(tmp_path / "one", tmp_path / "two")
    if objective in ("grpo", "ppo"):  # each process played half of every round
        rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
        played = [r["episodes_per_process"] for r in rows if "episodes_per_process" in r]
        assert played == [8, 8], played


@SLOW
def test_two_processes_match_one_in_distillation(tmp_path):
    "On-policy distillation splits its rounds too: each process has the teacher score its share of the turns."
    from alignbook.models import toy_model, toy_tokenizer

    teacher = toy_model(toy_tokenizer(), num_hidden_layers=1, hidden_size=32, intermediate_size=64, seed=1)
    teacher.save_pretrained(tmp_path / "t")
    run = ["max_steps=2", "batch_size=4", "hands_per_step=4", "eval_size=4", *SHARDED[:1]]
    run += [f"teacher={tmp_path / 't'}"]
    train("distill", tmp_path / "one", 1, *run)
    train("distill", tmp_path / "two", 2, *run, port=29645)
    assert_same_run(tmp_path / "one", tmp_path / "two")


@SLOW
@pytest.mark.parametrize("objective", ["sft", "grpo"])
def test_two_process_resume(objective, tmp_path):
    "A 2-process run stopped halfway and resumed equals one straight run (checkpoint by one, read by all)."
    base = ["batch_size=8", "eval_size=0"]
    if objective == "grpo":  # rounds; each process plays half of every round, before and after the resume
        base += ["hands_per_step=4", "group_size=4", *SHARDED]
    port = 29631 if objective == "sft" else 29636
    train(objective, tmp_path / "straight", 2, "max_steps=4", *base, port=port)
    train(objective, tmp_path / "resumed", 2, "max_steps=2", *base, port=port + 1)
    r = train(objective, tmp_path / "resumed", 2, "max_steps=4", *base, port=port + 2)
    assert "resum" in r.stderr.lower() or (tmp_path / "resumed" / "checkpoint-4").is_dir()
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_fsdp_on_cpu(tmp_path):
    "FSDP2 needs an accelerator in the installed accelerate; on CPU the test is skipped with the reason."
    import accelerate

    if torch.cuda.device_count() < 2:
        pytest.skip(
            f"accelerate {accelerate.__version__} runs FSDP only on GPUs/accelerators: on CPU, "
            "`accelerate launch --config_file fsdp.yaml` starts processes whose Accelerator reports "
            "DistributedType.NO, and Accelerator(cpu=True) falls back to DDP (MULTI_CPU); needs 2 GPUs"
        )
    train("sft", tmp_path / "one", 1, *RUNS["sft"])
    cmd = ["--accelerate-config", "fsdp"]
    r = subprocess.run(
        [sys.executable, "-m", "alignbook.cli", "train", "sft", "--out", str(tmp_path / "two"), *cmd]
        + ["--num-processes", "2", "--main-process-port", "29640", "log_every=1", *RUNS["sft"]],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", atol=1e-4)
