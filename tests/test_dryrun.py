"""Issue 18: each chapter executed as a dry run in the gpu preset trains exactly the gpu preset's config."""

import json, os
from pathlib import Path
import pytest
from alignbook.book import dry_run_book
from alignbook.config import CHAPTERS, SYNTHETIC_DATASETS, chapter_overrides, get_config

NBS = Path(__file__).resolve().parent.parent / "nbs"
SLOW = pytest.mark.skipif(not os.environ.get("ALIGNBOOK_SLOW"), reason="slow (minutes): set ALIGNBOOK_SLOW=1")
FAST = ["21_reward", "22_dpo", "29_compare_lm", "31_rl", "43_mapo"]
TRAINING = sorted(k for k, t in CHAPTERS.items() if t["objective"] and "/" not in k)

# keys a call sets itself, beyond the chapter's table (out_dir everywhere: each run writes where it likes)
CALL_SETS = {
    "10_sft": {"dataset", "max_steps", "eval_every", "eval_size"},  # the ID vs OOD runs of the chapter
    "32_sft_vs_rl": {"model", "max_steps", "eval_every", "eval_size", "max_attempts", "temperature", "lr"}
    | {"hands_per_step"},  # RL from the SFT checkpoint and the ablations, from the study's table
    "34_distill": {"teacher", "divergence", "max_steps", "eval_every", "eval_size"},  # rounds, eval_n
    "35_online_dpo": {
        "max_steps",
        "hands_per_step",
        "group_size",
        "eval_every",
        "eval_size",
        "batch_size",
        "n_train",
        "n_gen",
        "lr",
        "beta",  # the offline DPO arm matches online DPO's budget
    },
    "33_gspo_cispo": {"importance_level", "loss_type", "eps_low", "eps_high", "num_minibatches", "max_steps"}
    | {"hands_per_step", "eval_every", "eval_size", "sampler_temperature", "tis_cap"},
    "39_compare_pg": {"max_steps", "hands_per_step", "eval_every", "eval_size", "loss_type", "group_size"}
    | {"importance_level", "kl_coef", "eps_low", "eps_high", "num_minibatches"},
}
FROM_SCRATCH = {"flow"}  # trains its own small model on sklearn's digits: there is no Hub model to name


def _jsonable(d):
    return json.loads(json.dumps(dict(d), default=str))


def check_chapter(chapter: str, records: list[dict]):
    "Every train call the chapter made got its objective's gpu preset plus the chapter's gpu table."
    trains = [r for r in records if r["kind"] == "train" and r["config"]]
    compares = [r for r in records if r["kind"] == "compare"]
    if not trains and not compares:  # a chapter that fits in its own cells (27a's SAEs): what it loads
        trains = [r for r in records if r["kind"] == "load" and r["config"]]
    assert trains or compares, f"{chapter}: no train call recorded"
    tables = [chapter_overrides(k, "gpu") for k in CHAPTERS if k == chapter or k.startswith(chapter + "/")]
    for r in compares:  # a comparison gets the chapter's budget (a table) or the preset's name
        assert r.get("budget") in tables if "budget" in r else "gpu" in r["args"], f"{chapter}: {r}"
    for r in trains:
        got = r["config"]
        keys = set(get_config(got["objective"], "gpu"))
        table = {k: v for k, v in chapter_overrides(chapter, "gpu").items() if k in keys}
        want = _jsonable(get_config(got["objective"], "gpu", **table))
        skip = {"out_dir"} | CALL_SETS.get(chapter, set())
        diff = {k: (got.get(k), v) for k, v in want.items() if k not in skip and got.get(k) != v}
        assert not diff, f"{chapter} {r['name']}({got['objective']}): recorded vs gpu preset {diff}"
        if got["objective"] not in FROM_SCRATCH:
            assert not str(got["model"]).startswith("toy"), f"{chapter}: gpu run trains {got['model']}"
            ds = got.get("dataset")
            assert ds is None or ds not in SYNTHETIC_DATASETS or got["objective"] == "sft", (chapter, ds)
            assert ds is None or not str(ds).startswith("toy"), (chapter, ds)


@pytest.fixture(scope="module")
def fast_records(tmp_path_factory):
    return dry_run_book(
        "gpu", NBS, out=tmp_path_factory.mktemp("dry"), only=[f"{c}.ipynb" for c in FAST], jobs=2
    )


@pytest.mark.parametrize("chapter", FAST)
def test_dry_run_gpu_matches_preset(chapter, fast_records):
    check_chapter(chapter, fast_records[chapter])


def test_check_catches_an_inline_override():
    good = {"kind": "train", "name": "train_preference", "config": _jsonable(get_config("dpo", "gpu"))}
    check_chapter("22_dpo", [good])
    bad = {**good, "config": _jsonable(get_config("dpo", "gpu", max_steps=40))}
    with pytest.raises(AssertionError, match="max_steps"):
        check_chapter("22_dpo", [bad])
    with pytest.raises(AssertionError, match="no train call"):
        check_chapter("22_dpo", [])
    live = {"kind": "compare", "name": "compare_at_equal_budget", "config": None, "args": []}
    check_chapter("27b_fpo", [{**live, "budget": chapter_overrides("27b_fpo/live", "gpu")}])
    with pytest.raises(AssertionError, match="27b_fpo"):
        check_chapter("27b_fpo", [{**live, "budget": chapter_overrides("27b_fpo/live", "toy")}])


@SLOW
def test_dry_run_every_training_chapter(tmp_path):
    recs = dry_run_book("gpu", NBS, out=tmp_path, only=[f"{c}.ipynb" for c in TRAINING], jobs=2)
    for chapter in TRAINING:
        check_chapter(chapter, recs[chapter])
