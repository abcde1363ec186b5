"Tests for alignbook.lm.rewrite_study: the paired drop, the suite's item outcomes, the SFT loss, the summary."

import json
import os
import random

import pytest
import torch

from alignbook.lm import skills
from alignbook.lm.rewrite_study import (
    ABLATIONS,
    ARMS,
    drop_points,
    paper_vs_ours,
    sft_loss_on,
    sft_rows,
    suite_items,
    suite_outcomes,
    summarise,
    task_outcomes,
    task_score,
)
from alignbook.models import toy_model, toy_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = toy_tokenizer()
    return toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64, seed=0), tok


def test_drop_points_and_task_score():
    before = [[1] * 10 + [0] * 10, [1] * 10 + [0] * 10]
    after = [[1] * 5 + [0] * 15, [1] * 9 + [0] * 11]
    d = drop_points(before, after)
    assert d["drop"] == pytest.approx(100 * (5 + 1) / 40) and d["n"] == 40
    assert d["lo"] < d["drop"] < d["hi"] and d["z"] > 0
    same = drop_points(before, before)
    assert (same["drop"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    assert drop_points(after, before)["drop"] == pytest.approx(-d["drop"])
    t = task_score([[1, 0, 0, 0], [1, 1, 0, 0]])
    assert (
        t["success"] == 3 / 8
        and t["n"] == 8
        and (t["lo"], t["hi"]) == pytest.approx(skills.wilson_interval(3, 8))
    )
    assert suite_items({k: [True, False] for k in skills.FORGETTING_SUITE}) == [1, 0] * len(
        skills.FORGETTING_SUITE
    )


def test_suite_outcomes_agree_with_eval_skills(tiny):
    m, tok = tiny
    mine = suite_outcomes(m, tok, n=6)
    theirs = skills.eval_skills(m, tok, list(skills.FORGETTING_SUITE), n=6)
    assert set(mine) == set(skills.FORGETTING_SUITE)
    for row in theirs:
        assert len(mine[row["skill"]]) == 6
        assert sum(mine[row["skill"]]) / 6 == pytest.approx(row["success"])


def test_sft_loss_on_matches_a_direct_computation(tiny):
    m, tok = tiny
    recs = [{"problem": "Cards: 1 2 3 4. Make 24.", "solution": "abc"}, {"problem": "q", "solution": "hello"}]
    total, n = 0.0, 0
    for r in sft_rows(recs):
        p = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        pid, cid = tok(p)["input_ids"], tok(full[len(p) :])["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(m(torch.tensor([pid + cid])).logits[0, :-1], -1)
        total -= float(lp[len(pid) - 1 :].gather(-1, torch.tensor(cid)[:, None]).sum())
        n += len(cid)
    assert sft_loss_on(m, tok, recs, batch_size=1) == pytest.approx(total / n, abs=1e-4)


def _record(seeds=2, policy_lost=1):
    runs = []
    for s in range(seeds):
        base_items = [1] * 20 + [0] * 20
        arm = lambda loss, lost, task: dict(  # noqa: E731
            accept=0.5,
            loss0=loss + 0.01 * s,
            train_loss=loss / 2,
            diversity=0.1,
            suite={},
            hands=[1] * task + [0] * (30 - task),
            items=[0] * lost + [1] * (20 - lost) + [0] * 20,
        )
        runs.append(
            dict(
                seed=s,
                base=dict(hands=[1] * 9 + [0] * 21, items=base_items, suite={}),
                arms=dict(expert=arm(2.0, 8, 20), prompted=arm(1.5, 5, 20), policy=arm(1.0, policy_lost, 20)),
                ablations={k: dict(accept=0.5, loss0=1.0, diversity=0.1) for k in ABLATIONS},
            )
        )
    return dict(runs=runs)


def test_summarise_and_paper_table():
    rows = summarise(_record(2))
    assert [r["arm"] for r in rows] == ["base", *ARMS]
    base, exp, pol = rows[0], rows[1], rows[-1]
    assert base["task"] == pytest.approx(0.3) and exp["task"] == pytest.approx(20 / 30)
    assert pol["loss0"] == pytest.approx(1.005) and pol["drop"] == pytest.approx(100 / 40)
    assert exp["drop"] == pytest.approx(800 / 40) and exp["drop_lo"] < exp["drop"] < exp["drop_hi"]
    assert pol["task_vs_expert_z"] == 0.0
    table = paper_vs_ours(rows)
    assert [t["agrees"] for t in table] == ["", "yes", "yes", "", "yes", "yes"]
    assert paper_vs_ours(summarise(_record(1, policy_lost=15)))[4]["agrees"] == "no"
    json.dumps(rows)


@pytest.mark.skipif(not os.environ.get("ALIGNBOOK_SLOW"), reason="minutes on a CPU: ALIGNBOOK_SLOW=1")
def test_study_command_smoke(tmp_path):
    from alignbook.cli import main

    out = tmp_path / "rec.json"
    assert main(["study", "rewriting", "--budget", "smoke", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["command"].startswith("alignbook study rewriting") and rec["seconds"] > 0
    assert set(rec["runs"][0]["arms"]) == set(ARMS)


def test_task_outcomes_count_a_correct_answer_in_any_style(tiny, monkeypatch):
    "The task score reads an expert-worded answer as the verifier does; a wrong or empty one scores 0."
    from alignbook.lm import gpoints, rewrite_study
    from types import SimpleNamespace

    hands = gpoints.eval_hands(gpoints.ID_RULE, 4, 0)
    rng = random.Random(0)
    texts = [skills.expert_solution(hands[0], rng), skills.own_answer(hands[1]), "Answer: 1+1=2", ""]

    def fake(model, tokenizer, convs, n, max_new_tokens, temperature, batch_size):
        assert [c[-1]["content"] for c in convs] == [gpoints.toy_prompt(h) for h in hands]
        return SimpleNamespace(texts=texts)

    monkeypatch.setattr(rewrite_study, "sample_completions", fake)
    assert task_outcomes(*tiny, 4) == [1, 1, 0, 0]


def test_a_stopped_study_resumes_from_its_partial_record(tmp_path, monkeypatch):
    "Seeds already in the .partial.jsonl are kept, not rerun; a half-written last line is dropped."
    from alignbook.lm import rewrite_study

    ran = []

    def fake(budget, seed, preset="toy"):
        ran.append(seed)
        return dict(seed=seed, seconds=1.0)

    monkeypatch.setattr(rewrite_study, "run_rewriting", fake)
    partial = tmp_path / "rewriting_smoke.partial.jsonl"
    partial.write_text(json.dumps(dict(seed=0, seconds=5.0)) + '\n{"seed": 1, "secon')
    rec = rewrite_study.rewriting_study("smoke", seeds=3, partial=partial)
    assert ran == [1, 2]
    assert [r["seed"] for r in rec["runs"]] == [0, 1, 2]
    assert rec["run_seconds"] == 7.0
    assert [json.loads(x)["seed"] for x in partial.read_text().splitlines()] == [0, 1, 2]


@pytest.mark.parametrize("study", ["rewriting", "fail"])
def test_study_refuses_fewer_than_one_seed(study, capsys):
    "A bad --seeds stops before any run, naming the option and the value."
    from alignbook.config import STUDIES, load_plugins

    load_plugins()
    with pytest.raises(SystemExit):
        STUDIES[study](["--budget", "smoke", "--seeds", "0"])
    assert "--seeds must be at least 1; got 0" in capsys.readouterr().err
