"Tests for alignbook.lm.rewrite: the reward's invariants, generate–verify–fallback, the CLI, the policy's loop."

import json
import math
import subprocess
import sys

import pytest
import torch

from alignbook.cli import main
from alignbook.config import get_config
from alignbook.data import DataFormatError
from alignbook.lm.rewriter import RewriteRollouts, train_rewriter
from alignbook.lm.rewrite import (
    alignment_rewards,
    boxed_ok,
    diversity_rewards,
    embed_texts,
    fallback,
    final_answer,
    mean_pair_distance,
    qa_nll,
    read_records,
    rewrite_records,
    rewrite_rewards,
)
from alignbook.models import toy_model, toy_tokenizer

E3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # rewrites 0 and 2 are the same text


def sig(x):
    return 1 / (1 + math.exp(x))


# --- the reward -------------------------------------------------------------------------------------------
def test_hand_computed_group():
    R = rewrite_rewards(torch.ones(3), torch.tensor([1.0, 2.0, 3.0]), E3)
    z = 1 / math.sqrt(2 / 3)  # μ = 2, population σ = sqrt(2/3)
    d = 0.5  # (1 − 0)/2 between orthogonal vectors, 0 between equal ones
    D_S = (d + 0 + d) / 3
    want = [1 + 0.35 * sig(-z), 1 + 0.35 * 0.5 + 0.5 * (D_S - 0), 1 + 0.35 * sig(z)]
    assert R.tolist() == pytest.approx(want, abs=1e-5)


def test_hand_computed_lambdas_and_two_feasible():
    ok = torch.tensor([1.0, 0.0, 1.0, 1.0])
    e = torch.tensor([[1.0, 0.0], [0.3, 0.3], [-1.0, 0.0], [0.0, 2.0]])
    nll = torch.tensor([0.5, 9.0, 0.5, 2.0])
    R = rewrite_rewards(ok, nll, e, lambda_dist=1.0, lambda_div=2.0)
    mu, sd = 1.0, math.sqrt(((0.5 - 1) ** 2 * 2 + 1) / 3)
    pair = {(0, 2): 1.0, (0, 3): 0.5, (2, 3): 0.5}
    D_S = sum(pair.values()) / 3
    div = [max(0.0, D_S - pair[(2, 3)]), None, max(0.0, D_S - pair[(0, 3)]), max(0.0, D_S - pair[(0, 2)])]
    want = [1 + sig((0.5 - mu) / sd) + 2 * div[0], 0.0, 1 + sig((0.5 - mu) / sd) + 2 * div[2]]
    want.append(1 + sig((2 - mu) / sd) + 2 * div[3])
    assert R.tolist() == pytest.approx(want, abs=1e-5)
    # exactly two feasible: r_dist = σ(∓1) (z = ±1 with the population std), r_div = D(S) for both
    R2 = rewrite_rewards(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 3.0, 0.0]), E3[[0, 1, 1]])
    assert R2.tolist() == pytest.approx([1 + 0.35 * sig(-1) + 0.25, 1 + 0.35 * sig(1) + 0.25, 0.0], abs=1e-5)


def test_gate_zero_means_reward_zero():
    ok = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    R = rewrite_rewards(ok, torch.rand(5) * 3, torch.randn(5, 8))
    assert (R[ok == 0] == 0).all() and (R[ok == 1] >= 1).all()
    assert rewrite_rewards(torch.zeros(4), torch.rand(4), torch.randn(4, 3)).tolist() == [0.0] * 4
    assert rewrite_rewards(torch.zeros(4, dtype=torch.bool), torch.rand(4), torch.randn(4, 3)).sum() == 0


def test_zscores_inside_feasible_set_only():
    ok = torch.tensor([1.0, 1.0, 0.0, 1.0])
    nll, e = torch.tensor([0.4, 1.0, 0.7, 2.5]), torch.randn(4, 6)
    base = rewrite_rewards(ok, nll, e)
    for v in (-100.0, 0.0, 1e6, float("nan"), float("inf")):
        n2, e2 = nll.clone(), e.clone()
        n2[2], e2[2] = v, torch.randn(6)
        assert torch.equal(rewrite_rewards(ok, n2, e2), base)
    # the z-scores use the feasible set's population std: σ(−z) over S equals a by-hand computation
    x = nll[[0, 1, 3]]
    z = (x - x.mean()) / (x.std(unbiased=False) + 1e-6)
    assert torch.allclose(alignment_rewards(nll, ok.bool())[[0, 1, 3]], torch.sigmoid(-z))
    # shifting every feasible NLL by a constant changes nothing (a z-score)
    assert torch.allclose(rewrite_rewards(ok, nll + 5 * ok, e), base, atol=1e-6)


def test_duplicate_has_zero_marginal_diversity():
    e = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    div = diversity_rewards(e, torch.ones(4, dtype=torch.bool))
    assert div[1] == 0 and div[3] == 0 and div[0] > 0 and div[2] > 0
    # a scaled copy is the same direction: also a duplicate
    assert diversity_rewards(torch.cat([e[:3], 5 * e[:1]]), torch.ones(4, dtype=torch.bool))[3] == 0
    # every rewrite identical: no diversity anywhere
    assert diversity_rewards(torch.ones(5, 4), torch.ones(5, dtype=torch.bool)).sum() == 0


def test_fewer_than_two_feasible():
    nll, e = torch.tensor([0.3, 0.9, 1.2]), torch.randn(3, 4)
    one = torch.tensor([0.0, 1.0, 0.0])
    assert rewrite_rewards(one, nll, e).tolist() == pytest.approx([0.0, 1 + 0.35 * 0.5, 0.0])
    assert alignment_rewards(nll, one.bool()).tolist() == [0.0, 0.5, 0.0]
    assert diversity_rewards(e, one.bool()).tolist() == [0.0, 0.0, 0.0]
    assert rewrite_rewards(torch.ones(1), torch.tensor([2.0]), torch.randn(1, 4)).tolist() == pytest.approx(
        [1.175]
    )
    assert mean_pair_distance(torch.randn(1, 3)) == 0


def test_bad_reward_input_names_argument():
    ok, nll, e = torch.ones(3), torch.rand(3), torch.randn(3, 2)
    with pytest.raises(ValueError, match="nll"):
        rewrite_rewards(ok, nll[:2], e)
    with pytest.raises(ValueError, match="embeddings"):
        rewrite_rewards(ok, nll, e[:2])
    with pytest.raises(ValueError, match="task_ok"):
        rewrite_rewards(ok * 0.5, nll, e)
    with pytest.raises(ValueError, match="lambda_div"):
        rewrite_rewards(ok, nll, e, lambda_div=-1.0)
    with pytest.raises(ValueError, match="not finite"):
        rewrite_rewards(ok, torch.tensor([0.1, float("nan"), 0.2]), e)
    with pytest.raises(ValueError, match="task_ok"):
        rewrite_rewards([1, 1, 1], nll, e)


# --- scoring under the frozen base -------------------------------------------------------------------------
def test_qa_nll_and_embeddings_match_direct_computation():
    tok = toy_tokenizer()
    m = toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64, seed=1)
    probs, texts = ["What is 2+2?", "Name a colour."], ["4", "Blue, or red."]
    nll = qa_nll(m, tok, probs, texts, "plain", batch_size=1)
    for p, t, v in zip(probs, texts, nll):
        pid = tok(f"Problem: {p}\nAnswer: ", add_special_tokens=False)["input_ids"]
        cid = tok(t + tok.eos_token, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(m(torch.tensor([pid + cid])).logits[0, :-1], -1)
        want = -lp[len(pid) - 1 :].gather(-1, torch.tensor(cid)[:, None]).mean()
        assert float(v) == pytest.approx(float(want), abs=1e-4)
    assert qa_nll(m, tok, probs, texts, "chat").shape == (2,)
    e = embed_texts(m, tok, ["ab", "abc", ""], batch_size=2)
    with torch.no_grad():
        h = m(torch.tensor([tok("abc", add_special_tokens=False)["input_ids"]]), output_hidden_states=True)
    assert e.shape == (3, 32) and torch.allclose(e[1], h.hidden_states[-1][0].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="qa_format"):
        qa_nll(m, tok, probs, texts, "json")


def test_judge_matches_direct_computation_and_gates():
    from alignbook.lm.rewrite import judge_yes, judge_gate, JUDGE_QUESTION

    tok = toy_tokenizer()
    m = toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64, seed=2)
    probs, texts = ["What is 2+2?", "Name a colour."], ["4", "Blue, or red."]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    p = judge_yes(m, tok, probs, texts, batch_size=1)
    for q, t, v in zip(probs, texts, p):
        ask = [{"role": "user", "content": JUDGE_QUESTION.format(problem=q, solution=t)}]
        pid = ids(tok.apply_chat_template(ask, add_generation_prompt=True, tokenize=False))
        lps = []
        for word in ("YES", "NO"):
            full = ids(
                tok.apply_chat_template(ask + [{"role": "assistant", "content": word}], tokenize=False)
            )
            with torch.no_grad():
                lp = torch.log_softmax(m(torch.tensor([full])).logits[0, :-1], -1)
            lps.append(lp[len(pid) - 1 :].gather(-1, torch.tensor(full[len(pid) :])[:, None]).sum())
        assert float(v) == pytest.approx(float(torch.sigmoid(lps[0] - lps[1])), abs=1e-4)
    assert torch.allclose(
        judge_yes(m, tok, probs, texts, batch_size=2), p, atol=1e-5
    )  # padding changes nothing
    gate = judge_gate(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.9, 0.1, 0.99]))
    assert gate.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="one shape"):
        judge_gate(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="one problem per text"):
        judge_yes(m, tok, probs, texts[:1])


def test_rollouts_with_the_judge_gate_on_its_answer(monkeypatch):
    from alignbook.lm import rewriter
    from alignbook.lm.reference import make_reference
    from alignbook.models import add_lora

    tok = toy_tokenizer()
    policy = add_lora(toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64), r=4)
    recs = [{"problem": "2+2?", "solution": "\\boxed{4}"}]
    texts = ["\\boxed{4}", "four: \\boxed{4}", "\\boxed{5}"]
    monkeypatch.setattr(rewriter, "judge_yes", lambda *a, **k: torch.tensor([0.9, 0.2, 0.9]))
    for judge, want in ((False, [1, 1, 0]), (True, [1, 0, 0])):
        cfg = get_config("rewriter", "toy", group_size=3, qa_format="plain", judge=judge)
        ro = RewriteRollouts(tok, cfg, recs, make_reference(cfg, policy, online=True), boxed_ok)
        s = ro.score(policy, recs, texts, [False] * 3)
        assert s["ok"].tolist() == want
        assert (s["rewards"][torch.tensor(want) == 0] == 0).all()


# --- generate–verify–fallback ------------------------------------------------------------------------------
def test_final_answer_and_fallback():
    assert final_answer("so x = \\boxed{\\dfrac{3}{4}}.") == "\\frac{3}{4}"
    assert final_answer("\\boxed{ 12 } then \\boxed{\\text{(B)}}") == "(B)"
    assert final_answer("The answer is 1,024.") == "1024" and final_answer("no numbers") is None
    rec = {"problem": "2+2?", "solution": "It is \\boxed{4}."}
    kept = fallback(rec, "Two and two: \\boxed{4}", boxed_ok)
    assert (
        kept["accepted"]
        and kept["solution"] == "Two and two: \\boxed{4}"
        and kept["original"] == rec["solution"]
    )
    for bad in ("It is \\boxed{5}", "", "   ", "no answer at all"):
        f = fallback(rec, bad, boxed_ok)
        assert not f["accepted"] and f["solution"] == rec["solution"] and f["rewrite"] == bad
    gold = {"problem": "?", "solution": "says \\boxed{7} wrongly", "answer": "8"}
    assert (
        fallback(gold, "\\boxed{8}", boxed_ok)["accepted"]
        and not fallback(gold, "\\boxed{7}", boxed_ok)["accepted"]
    )


def _records(path, n=7):
    rows = [
        {"problem": f"What is {a} + 1?", "solution": f"{a} + 1 = \\boxed{{{a + 1}}}", "id": a}
        for a in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _answer(recs):
    return [f"Adding one: \\boxed{{{int(r['problem'].split()[2]) + 1}}}" for r in recs]


def test_resume_after_interruption(tmp_path):
    good, bad = read_records(_records(tmp_path / "d.jsonl"))
    assert len(good) == 7 and not bad
    calls = []

    def dies_on_third_batch(recs):
        calls.append([r["id"] for r in recs])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _answer(recs)

    out = tmp_path / "o.jsonl"
    with pytest.raises(KeyboardInterrupt):
        rewrite_records(good, dies_on_third_batch, boxed_ok, out, batch_size=2, progress=False)
    assert [json.loads(x)["row"] for x in out.read_text().splitlines()] == [0, 1, 2, 3]
    with out.open("a") as f:  # killed in the middle of writing a line
        f.write('{"row": 4, "problem": "What is 4 + 1?", "solu')
    res = rewrite_records(good, dies_on_third_batch, boxed_ok, out, batch_size=2, progress=False)
    assert calls[3:] == [[4, 5], [6]]  # only the rows not done, the cut-off one included
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(7)) and all(r["accepted"] for r in rows)
    assert (res["n"], res["resumed_from"], res["new"], res["acceptance_rate"]) == (7, 4, 3, 1.0)
    from alignbook.data import load_rows, validate_dataset

    sft = load_rows(out)  # the output is SFT data as it stands
    assert validate_dataset(sft, "sft") == "conversational"
    assert sft[5]["completion"][0]["content"] == rows[5]["solution"] == "Adding one: \\boxed{6}"
    again = rewrite_records(good, dies_on_third_batch, boxed_ok, out, batch_size=2, progress=False)
    assert again["new"] == 0 and len(calls) == 5  # a finished file is not redone
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"problem": "Different?", "solution": "\\boxed{1}"}) + "\n")
    with pytest.raises(DataFormatError, match="another --out|other data"):
        rewrite_records(read_records(other)[0], _answer, boxed_ok, out, progress=False)


def test_bad_records_named_by_row_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        json.dumps({"problem": "ok?", "solution": "\\boxed{1}"})
        + "\n"
        + json.dumps({"solution": "\\boxed{2}"})
        + "\n"
        + json.dumps({"problem": "x", "solution": 3})
        + "\n"
        + "{not json\n"
        + "\n"
        + json.dumps(["a", "list"])
        + "\n"
        + json.dumps({"problem": "  ", "solution": "s"})
        + "\n"
    )
    good, bad = read_records(p)
    assert [i for i, _ in good] == [0]
    text = "\n".join(bad)
    assert "line 2 (row 1), field 'problem': missing" in text
    assert "line 3 (row 2), field 'solution': expected a non-empty string, got 3" in text
    assert "line 4 (row 3): not valid JSON" in text
    assert "line 6 (row 5): expected a JSON object" in text
    assert "line 7 (row 6), field 'problem'" in text
    with pytest.raises(DataFormatError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")


# --- the command line ----------------------------------------------------------------------------------------
def test_cli_rewrite_bad_rows_resume_and_skip(tiny, tmp_path, capsys):
    d = _records(tmp_path / "d.jsonl", n=3)
    with d.open("a") as f:
        f.write(json.dumps({"problem": "x"}) + "\n")
    out = tmp_path / "o.jsonl"
    args = ["rewrite", "--model", tiny, "--data", str(d), "--out", str(out), "--max-new-tokens", "4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "line 4 (row 3), field 'solution': missing" in err and "--skip-bad" in err and not out.exists()
    assert main(args + ["--skip-bad"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["n"], res["bad_rows"], res["verifier"]) == (3, 1, "boxed")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # an untrained model's rewrites fail the verifier: every target falls back to the original solution
    assert all(r["solution"] == (r["rewrite"] if r["accepted"] else r["original"]) for r in rows)
    assert main(args + ["--skip-bad"]) == 0 and json.loads(capsys.readouterr().out)["new"] == 0


def test_cli_help_lists_rewrite():
    r = subprocess.run(
        [sys.executable, "-m", "alignbook.cli", "rewrite", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--data" in r.stdout and "--skip-bad" in r.stdout


# --- the rewriting policy -----------------------------------------------------------------------------------
def test_registered_presets():
    toy, gpu = get_config("rewriter", "toy"), get_config("rewriter", "gpu")
    assert toy.lora and toy.group_size == 5 and (toy.lambda_dist, toy.lambda_div) == (0.35, 0.5)
    assert gpu.model.startswith("Qwen/") and "MATH" in gpu.dataset and gpu.verifier == "boxed"
    assert (gpu.lora_r, gpu.lora_alpha, gpu.lr, gpu.beta, gpu.qa_format) == (64, 32, 3e-6, 0.001, "plain")
    with pytest.raises(ValueError, match="group_size"):
        train_rewriter(get_config("rewriter", "toy", group_size=1))


def test_gpu_preset_loading_path_trains_on_tiny_local_model(tiny, tmp_path):
    data = _records(tmp_path / "math.jsonl", n=12)
    cfg = get_config(
        "rewriter",
        "gpu",
        model=tiny,
        dataset=str(data),
        device="cpu",
        mixed_precision="no",
        max_steps=2,
        problems_per_step=2,
        group_size=3,
        max_new_tokens=6,
        max_length=64,
        batch_size=4,
        gen_batch_size=8,
        eval_every=2,
        eval_size=3,
        save_every=0,
        warmup_steps=0,
        lr=1e-3,
        out_dir=str(tmp_path / "run"),
    )
    res = train_rewriter(cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert {"reward", "accept", "frac_zero_std", "kl", "eval/accept", "eval/nll", "eval/diversity"} <= set(
        rows[-1]
    )
    assert all(math.isfinite(r["loss"]) for r in rows[1:])
    assert res.summary["rounds"] == 2 and 0 < res.summary["trainable"]
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n")
    with pytest.raises(DataFormatError, match="row 0, field 'solution'"):
        train_rewriter(cfg.replace(dataset=str(bad)), progress=False)


def test_rollouts_score_gates_and_uses_the_frozen_base():
    from alignbook.lm.reference import make_reference
    from alignbook.models import add_lora

    tok = toy_tokenizer()
    policy = add_lora(toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64), r=4)
    with torch.no_grad():  # move the adapter away from B = 0: policy ≠ base
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    cfg = get_config("rewriter", "toy", group_size=3, qa_format="plain")
    recs = [{"problem": "2+2?", "solution": "\\boxed{4}"}, {"problem": "1+5?", "solution": "\\boxed{6}"}]
    texts = ["\\boxed{4}", "four: \\boxed{4}", "\\boxed{5}", "\\boxed{6}", "six", "\\boxed{6} ok"]
    ro = RewriteRollouts(tok, cfg, recs, make_reference(cfg, policy, online=True), boxed_ok)
    s = ro.score(policy, recs, texts, [False, False, False, False, False, True])
    assert s["ok"].tolist() == [1, 1, 0, 1, 0, 0]  # the last is accepted by the verifier but truncated
    assert s["rewards"][[2, 4, 5]].tolist() == [0, 0, 0] and (s["rewards"][[0, 1, 3]] >= 1).all()
    with policy.disable_adapter():
        want = qa_nll(policy, tok, ["2+2?"] * 3 + ["1+5?"] * 3, texts, "plain")
    assert torch.allclose(s["nll"], want, atol=1e-5)  # scored by the base, not the adapted policy
    assert not torch.allclose(
        qa_nll(policy, tok, ["2+2?"] * 3 + ["1+5?"] * 3, texts, "plain"), want, atol=1e-3
    )
    assert s["r_dist"][3] == 0.5 and s["r_div"][3] == 0  # a group with one feasible rewrite


def test_cli_train_rewriter(tiny, tmp_path, capsys):
    data = _records(tmp_path / "d.jsonl", n=6)
    out = tmp_path / "run"
    args = ["train", "rewriter", "--preset", "toy", "--out", str(out), f"model={tiny}", f"dataset={data}"]
    args += ["verifier=boxed", "qa_format=plain", "max_steps=1", "problems_per_step=2", "group_size=2"]
    args += ["max_new_tokens=4", "eval_every=0", "device=cpu"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["summary"]["rounds"] == 1 and (out / "final" / "model.safetensors").exists()
    bad = [a.replace(str(out), str(tmp_path / "run2")) for a in args] + ["verifier=regex"]
    assert main(bad) == 2
    assert "verifier" in capsys.readouterr().err
