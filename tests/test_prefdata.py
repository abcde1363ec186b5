"Tests for alignbook.lm.prefdata: ground-truth pairs, unpaired form, loaders for local TRL-format files."

import json, random, pytest
from datasets import Dataset
from alignbook.data import validate_dataset, DataFormatError
from alignbook.lm.gpoints import ID_RULE, sample_hand, expert_response, score_response
from alignbook.lm.prefdata import (
    gpoints_preferences,
    unpair_preferences,
    corrupt_answer,
    load_preference_dataset,
    extract_prompt,
    hand_of,
    CORRUPTIONS,
)


def test_pairs_have_true_preferences():
    ds = gpoints_preferences(40, seed=3)
    assert validate_dataset(ds, "preference") == "conversational"
    for r in ds:
        h = hand_of(r)
        assert score_response(r["chosen"][0]["content"], h).correct
        assert not score_response(r["rejected"][0]["content"], h).correct
        assert r["chosen"] != r["rejected"]
    assert list(gpoints_preferences(40, seed=3)["rejected"]) == list(ds["rejected"])  # deterministic


def test_corruptions():
    rng = random.Random(1)
    for _ in range(20):
        h = sample_hand(rng, ID_RULE)
        good = expert_response(h, rng)
        for k in CORRUPTIONS:
            s = score_response(corrupt_answer(good, h, rng, k), h)
            assert not s.correct and s.reward < 0
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_answer(good, h, rng, "x")


def test_unpaired():
    ds = gpoints_preferences(10, seed=0)
    un = unpair_preferences(ds)
    assert validate_dataset(un, "unpaired") == "conversational" and len(un) == 20
    assert sum(un["label"]) == 10


def test_loader_local_files(tmp_path):
    conv = lambda role, text: [{"role": role, "content": text}]
    rows = [
        {
            "chosen": conv("user", f"q{i}") + conv("assistant", "good"),
            "rejected": conv("user", f"q{i}") + conv("assistant", "bad"),
            "score_chosen": 9.0,
            "score_rejected": 1.0,
        }
        for i in range(5)
    ]
    p = tmp_path / "ultrafeedback_binarized.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_preference_dataset(str(p))
    assert ds[2]["prompt"] == conv("user", "q2") and ds[2]["chosen"] == conv("assistant", "good")
    assert len(load_preference_dataset(str(p), n=3)) == 3
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "disk"))
    assert load_preference_dataset(str(tmp_path / "disk"))[0]["rejected"] == conv("assistant", "bad")
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert len(load_preference_dataset(str(tmp_path / "d.parquet"))) == 5
    un = tmp_path / "kto.jsonl"
    un.write_text(
        "\n".join(
            json.dumps(
                {"prompt": conv("user", "q"), "completion": conv("assistant", "a"), "label": i % 2 == 0}
            )
            for i in range(4)
        )
    )
    assert list(load_preference_dataset(str(un), kind="unpaired")["label"]) == [True, False, True, False]


def test_loader_errors(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hi")
    with pytest.raises(ValueError, match="unsupported"):
        load_preference_dataset(str(p))
    q = tmp_path / "bad.jsonl"
    q.write_text(json.dumps({"question": "a", "answer": "b"}))
    with pytest.raises(DataFormatError, match="chosen/rejected"):
        load_preference_dataset(str(q))
    with pytest.raises(DataFormatError):
        extract_prompt(
            {
                "chosen": [{"role": "assistant", "content": "x"}],
                "rejected": [{"role": "assistant", "content": "y"}],
            }
        )
    assert extract_prompt({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"})["prompt"] == "Q: hi A: "
