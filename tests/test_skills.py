"The toy world's skills: styles and their verifier, corpus hygiene, eval_skills and its command, the study's statistics."

import json
import random
import subprocess
import sys

import pytest

from alignbook.lm import gpoints, skills
from alignbook.lm.sftrl_study import paired_effect
from alignbook.toybase import toy_corpus_v2, length_grouped, corpus_example

HAND = gpoints.Hand(["K", "3", "4", "6"])


@pytest.mark.parametrize("style", skills.STYLES)
def test_every_style_verifies(style):
    rng = random.Random(0)
    for _ in range(30):
        hand = gpoints.sample_hand(rng, gpoints.Rule.random(rng))
        text = skills.solution_text(hand, skills.any_formula(hand, rng), style)
        assert skills.solution_ok(text, hand), text
        assert skills.is_own_style(text) == (style == "own")


@pytest.mark.parametrize(
    "text",
    [
        "3*6=18, 18+10=28, 28-4=25.",  # a step is wrong
        "3*6=18, 18+10=28.",  # a card unused
        "3*6=18, 18+18=36, 36-12=24.",  # 18 used twice
        "Answer: 3*6+10-4=25",
        '{"number":[10,3,4,6],"formula":"3*6+10+4"}',
        "",
        "x" * 5000,
    ],
)
def test_wrong_solutions_are_rejected(text):
    assert not skills.solution_ok(text, HAND)


def test_expert_style_states_its_formula_after_answer():
    "The expert's last line uses the seen `Answer:` convention, so the formula is read from it."
    text = skills.solution_text(HAND, "3*6+10-4", "expert")
    assert text.startswith("We need 24. The cards count as 10, 3, 4, 6.")
    assert text.endswith("Answer: 3*6+10-4=24")
    assert skills.answer_formula(text) == "3*6+10-4=24"
    assert not skills.solution_ok(text.replace("-4=24", "+4=24"), HAND)


def test_wilson_interval():
    assert skills.wilson_interval(0, 20)[0] == 0.0
    assert skills.wilson_interval(20, 20)[1] == 1.0
    lo, hi = skills.wilson_interval(30, 100)
    assert 0.21 < lo < 0.22 and 0.39 < hi < 0.40  # textbook values 0.2189, 0.3958


def test_corpus_keeps_eval_items_out():
    ds = toy_corpus_v2(3000, seed=3)
    assert set(ds["kind"]) == {
        "gpoints",
        "read",
        "copy",
        "revision",
        "rewriting",
        "arithmetic",
        "strings",
        "format",
    }
    held = {p for name in skills.TEXT_SKILLS for p, _ in skills.skill_items(name)}
    for row in ds:
        first = row["prompt"][0]["content"]
        assert first not in held
        if "Cards:" in first:
            assert not gpoints.is_held_out(gpoints.parse_toy_prompt(first))
        assert "J=11 Q=12 K=13" not in first  # the rule-OOD mapping is never read


def test_revision_dialogue_is_the_verifiers_turn():
    rng = random.Random(1)
    for _ in range(50):
        msgs, answer = corpus_example("revision", rng)
        hand = gpoints.parse_toy_prompt(msgs[0]["content"])
        score = gpoints.score_response(msgs[1]["content"], hand)
        assert not score.correct
        assert msgs[2]["content"] == gpoints.revision_prompt(score)
        assert gpoints.score_response(answer, hand).correct


def test_rewriting_keeps_the_formula():
    rng = random.Random(2)
    for _ in range(50):
        msgs, answer = corpus_example("rewriting", rng)
        hand = gpoints.parse_toy_prompt(msgs[0]["content"])
        assert skills.is_own_style(answer) and skills.solution_ok(answer, hand)


def test_corpus_rules_lean_to_court_values_and_skip_id_and_ood():
    from alignbook.toybase import corpus_rule

    rng = random.Random(5)
    rules = [corpus_rule(rng) for _ in range(3000)]
    values = [v for r in rules for v in r.face_values]
    assert {r.face_values for r in rules}.isdisjoint({(10, 10, 10), (11, 12, 13)})
    assert set(values) == set(range(1, 14))
    court = sum(v >= 10 for v in values) / len(values)
    assert 0.6 < court < 0.7  # 0.5 + 0.5 * 4/13 = 0.654
    assert sum(corpus_rule(rng, p_court=0.0).face_values[0] >= 10 for _ in range(3000)) / 3000 < 0.35


def test_drills_are_exact():
    rng = random.Random(4)
    for _ in range(50):
        msgs, answer = corpus_example("read", rng)
        assert json.loads(answer) == gpoints.parse_toy_prompt(msgs[0]["content"]).numbers
        msgs, answer = corpus_example("copy", rng)
        assert msgs[0]["content"] == f"Copy: {answer}" and answer == answer.strip() and answer


def test_copy_drills_come_first():
    from alignbook.toybase import _training_rows, BASE_RECIPE_V2
    from alignbook.models import toy_tokenizer

    tok = toy_tokenizer()
    r = {**BASE_RECIPE_V2, "steps": 6, "drill_steps": 2, "batch_size": 4}
    rows, shuffle = _training_rows(r, 2, tok)
    assert not shuffle and len(rows) == 24
    firsts = [tok.decode(x["input_ids"][:8]) for x in rows]
    assert all("Copy:" in f for f in firsts[:8])
    assert sum("Copy:" in f for f in firsts[8:]) < 8


def test_a_recipe_without_drills_trains_on_the_mixture_alone():
    from alignbook.toybase import _training_rows, BASE_RECIPE_V2
    from alignbook.models import toy_tokenizer

    tok = toy_tokenizer()
    r = {**BASE_RECIPE_V2, "steps": 3, "drill_steps": 0, "batch_size": 4}
    rows, _ = _training_rows(r, 2, tok)
    assert len(rows) == 12
    all_drills, _ = _training_rows({**r, "drill_steps": 5}, 2, tok)
    assert len(all_drills) == 12 and all("Copy:" in tok.decode(x["input_ids"][:8]) for x in all_drills)


def test_two_builds_give_identical_files(tmp_path):
    from alignbook.toybase import build_toy_base

    small = dict(steps=2, drill_steps=1, batch_size=4, save_every=0)
    a, b = build_toy_base(tmp_path / "a", **small), build_toy_base(tmp_path / "b", **small)
    names = sorted(p.name for p in a.iterdir())
    assert "BUILD.json" in names and "model.safetensors" in names
    assert names == sorted(p.name for p in b.iterdir())
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_length_grouped_batches():
    rows = [{"input_ids": [0] * n} for n in random.Random(0).choices(range(5, 300), k=640)]
    out = length_grouped(rows, 16, seed=0, span=5)
    assert sorted(map(id, out)) == sorted(map(id, rows))
    spread = [
        max(len(r["input_ids"]) for r in out[i : i + 16]) - min(len(r["input_ids"]) for r in out[i : i + 16])
        for i in range(0, len(out), 16)
    ]
    assert sum(spread) / len(spread) < 60  # random batches of this data spread over ~270 tokens


def test_eval_skills_command(tmp_path):
    from alignbook.models import toy_model, toy_tokenizer

    tok = toy_tokenizer()
    toy_model(
        tok,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    ).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignbook.cli",
            "eval",
            "skills",
            "--model",
            str(tmp_path / "m"),
            "--n",
            "4",
            "--n-hands",
            "4",
            "--json",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "s.json").read_text())["skills"]
    assert [r["skill"] for r in rows] == list(skills.SKILLS)
    assert all(0 <= r["lo"] <= r["success"] <= r["hi"] <= 1 for r in rows)
    assert "95% interval" in out.stderr


def test_paired_effect():
    e = paired_effect([[1, 1, 0, 0], [1, 0, 0, 0]], [[0, 1, 0, 0], [0, 0, 0, 0]])
    assert e["effect"] == 0.25 and e["n"] == 8
    assert abs(e["se"] - (0.25 * 0.75 * 8 / 7) ** 0.5 / 8**0.5) < 1e-12


def test_build_base_v1_needs_an_out_dir():
    out = subprocess.run(
        [sys.executable, "-m", "alignbook.cli", "build-base", "--version", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--out DIR" in out.stderr


def test_study_refuses_an_unknown_budget():
    out = subprocess.run(
        [sys.executable, "-m", "alignbook.cli", "study", "sft-vs-rl", "--budget", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--budget" in out.stderr


@pytest.mark.skipif(not __import__("os").environ.get("ALIGNBOOK_SLOW"), reason="slow: set ALIGNBOOK_SLOW=1")
def test_study_smoke_writes_record_and_plot(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignbook.cli",
            "study",
            "sft-vs-rl",
            "--budget",
            "smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads((tmp_path / "sft_vs_rl_smoke.json").read_text())
    assert rec["command"].startswith("alignbook study sft-vs-rl --budget smoke") and rec["seconds"] > 0
    assert (tmp_path / "sft_vs_rl_smoke.png").stat().st_size > 0
