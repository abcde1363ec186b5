"Tests for alignbook.lm.rewrite_study: the paired drop, the suite's item outcomes, the SFT loss, the summary."

import json
import os

import pytest
import torch

from alignbook.lm import skills
from alignbook.lm.rewrite_study import (
    ABLATIONS,
    ARMS,
    paired_drop,
    paper_vs_ours,
    sft_loss_on,
    sft_rows,
    suite_outcomes,
    summarise,
)
from alignbook.models import toy_model, toy_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = toy_tokenizer()
    return toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64, seed=0), tok


def test_paired_drop():
    before = {"a": [True] * 10, "b": [False] * 10}
    after = {"a": [True] * 5 + [False] * 5, "b": [False] * 9 + [True]}
    d = paired_drop(before, after)
    assert d["drop"] == pytest.approx(100 * (0.5 - 0.1) / 2)
    assert d["lo"] < d["drop"] < d["hi"] and d["hi"] - d["lo"] < 60
    same = paired_drop(before, before)
    assert (same["drop"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    assert paired_drop(after, before)["drop"] == pytest.approx(-d["drop"])


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


def _record(seeds=2):
    runs = []
    for s in range(seeds):
        t = dict(success=0.3 + 0.01 * s, lo=0.2, hi=0.4, n=100)
        arm = lambda loss, drop: dict(  # noqa: E731
            accept=0.5,
            loss0=loss + 0.01 * s,
            train_loss=loss / 2,
            diversity=0.1,
            task=t,
            suite={},
            forgetting=dict(drop=drop + s, lo=drop - 3, hi=drop + 3),
        )
        runs.append(
            dict(
                seed=s,
                base=dict(task=t, suite={}),
                arms=dict(expert=arm(2.0, 10.0), prompted=arm(1.5, 6.0), policy=arm(1.0, 3.0)),
                ablations={k: dict(accept=0.5, loss0=1.0, diversity=0.1) for k in ABLATIONS},
            )
        )
    return dict(runs=runs)


def test_summarise_and_paper_table():
    rows = summarise(_record(2))
    assert [r["arm"] for r in rows] == ["base", *ARMS]
    pol = rows[-1]
    assert pol["loss0"] == pytest.approx(1.005) and pol["drop"] == pytest.approx(3.5)
    # two seeds: a t-interval (12.71 · sd / √2) around the mean, not the seeds' own intervals
    assert pol["drop_hi"] - pol["drop"] == pytest.approx(12.71 * (0.5**0.5) / 2**0.5, rel=1e-3)
    one = summarise(_record(1))[-1]
    assert (one["drop_lo"], one["drop_hi"]) == (0.0, 6.0)
    table = paper_vs_ours(rows)
    assert [t["agrees"] for t in table] == ["", "yes", "yes", "", "yes", "yes"]
    worse = _record(1)
    worse["runs"][0]["arms"]["policy"]["forgetting"]["drop"] = 20.0
    assert paper_vs_ours(summarise(worse))[4]["agrees"] == "no"
    json.dumps(rows)


@pytest.mark.skipif(not os.environ.get("ALIGNBOOK_SLOW"), reason="minutes on a CPU: ALIGNBOOK_SLOW=1")
def test_study_command_smoke(tmp_path):
    from alignbook.cli import main

    out = tmp_path / "rec.json"
    assert main(["study", "rewriting", "--budget", "smoke", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["command"].startswith("alignbook study rewriting") and rec["seconds"] > 0
    assert set(rec["runs"][0]["arms"]) == set(ARMS)
