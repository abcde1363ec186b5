"Every objective's train function returns one result type, `alignbook.results.TrainResult`."

import inspect
import math

import torch

from alignbook.config import OBJECTIVES, get_config, load_plugins
from alignbook.results import TrainResult


def test_every_registered_train_function_is_annotated_trainresult():
    load_plugins()
    bad = {
        name: o.train
        for name, o in OBJECTIVES.items()
        if inspect.signature(o.train).return_annotation not in (TrainResult, "TrainResult")
    }
    assert not bad, (
        f"train functions not returning TrainResult: { {k: f.__qualname__ for k, f in bad.items()} }"
    )


def test_no_train_function_builds_its_own_result_dict():
    "Each registered train function reaches TrainResult in its own source (from_trainer or the constructor)."
    load_plugins()
    for name, o in OBJECTIVES.items():
        fn = getattr(o.train, "__wrapped__", o.train)
        src = inspect.getsource(fn)
        assert "TrainResult" in src or "train_rl(" in src, (
            f"{name}: {fn.__qualname__} does not build a TrainResult"
        )


def test_get_falls_back_to_the_summary():
    res = TrainResult("out", None, {"loss": 0.5}, [])
    assert res.get("loss") == 0.5 and res["loss"] == 0.5 and res.get("nope", 3) == 3
    assert res.get("out_dir") == "out"


def test_flow_returns_trainresult_and_saves_final(tmp_path):
    from alignbook.diffusion.flow import train_flow

    cfg = get_config("flow", "toy", max_steps=2, batch_size=8, eval_size=16, sample_steps=2, log_every=1)
    res = train_flow(cfg.replace(out_dir=str(tmp_path)))
    assert isinstance(res, TrainResult) and res["steps"] == 2 and math.isfinite(res["mmd_to_data"])
    assert (tmp_path / "final" / "alignbook_config.json").exists()
    assert list((tmp_path / "final").glob("*.safetensors"))


def test_image_prefs_final_is_the_merged_unet(tmp_path):
    from alignbook.diffusion.flow import toy_digits_flow
    from alignbook.diffusion.preftrain import train_image_prefs

    cfg = get_config(
        "diffusion-dpo",
        "toy",
        n_pairs=16,
        batch_size=8,
        max_steps=2,
        eval_size=16,
        log_every=1,
        sample_steps=2,
        out_dir=str(tmp_path),
    )
    res = train_image_prefs(cfg, return_model=True)
    assert isinstance(res, TrainResult) and 0 < res["n_pairs"] <= 16 and res.samples is not None
    final = toy_digits_flow(res.final_path)
    x, t, c = torch.randn(3, 1, 8, 8), torch.rand(3), torch.arange(3)
    with torch.no_grad():
        want = res.model(x, t, class_labels=c).sample
        got = final(x, t, class_labels=c).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
