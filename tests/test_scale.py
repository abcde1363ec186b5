"""Issue 14: the vLLM rollout engine's fallback and importance-sampling correction, the GPU smoke test's CPU
dry path, and the benchmarks' FLOP/s against the machine's measured matmul peak."""

import copy, math, os
import pytest
import torch
from alignbook.config import get_config
from alignbook.lm import engine as eng
from alignbook.lm.engine import is_correction, merged_state, resolve_engine
from alignbook.lm.rollout import sample_completions

SLOW = pytest.mark.skipif(not os.environ.get("ALIGNBOOK_SLOW"), reason="slow (minutes): set ALIGNBOOK_SLOW=1")


def test_vllm_falls_back_to_generate(capsys, monkeypatch):
    monkeypatch.setattr(eng, "vllm_available", lambda: False)
    assert resolve_engine("vllm") == "generate"
    assert "sampling with transformers' generate instead" in capsys.readouterr().err
    assert eng.make_engine(get_config("grpo", rollout_engine="vllm")) is None
    with pytest.raises(ValueError, match="rollout_engine must be one of"):
        resolve_engine("vLLM")
    assert get_config("grpo", "gpu").rollout_engine == "vllm"  # the gpu preset asks for it


def test_is_correction_modes():
    g = torch.Generator().manual_seed(0)
    trainer = -torch.rand(4, 6, generator=g) * 3
    sampler = trainer + 0.5 * torch.randn(4, 6, generator=g)
    mask = (torch.arange(6)[None] < torch.tensor([[6], [3], [1], [5]])).float()
    ratio = torch.exp(trainer - sampler)
    torch.testing.assert_close(is_correction(trainer, sampler, mask, 2.0), ratio.clamp(max=2.0) * mask)
    torch.testing.assert_close(
        is_correction(trainer, sampler, mask, 2.0, "token_mask"), ratio * (ratio <= 2.0) * mask
    )
    seq = torch.exp(((trainer - sampler) * mask).sum(1, keepdim=True))
    torch.testing.assert_close(
        is_correction(trainer, sampler, mask, 2.0, "sequence_truncate"), seq.clamp(max=2.0) * mask
    )
    torch.testing.assert_close(is_correction(trainer, trainer, mask), mask)  # no mismatch: weight 1
    assert not is_correction(trainer.requires_grad_(), sampler, mask).requires_grad  # a stopped gradient
    with pytest.raises(ValueError, match="mode must be one of"):
        is_correction(trainer, sampler, mask, mode="token")


def test_is_correction_is_unbiased():
    "Engine samples reweighted by π_θ/π_sampler (cap out of reach) estimate E_πθ[f]; unweighted they do not."
    g = torch.Generator().manual_seed(1)
    p, q = torch.tensor([0.5, 0.2, 0.2, 0.1]), torch.tensor([0.25, 0.25, 0.25, 0.25])
    f = torch.tensor([2.0, -1.0, 0.0, -4.0])
    y = torch.multinomial(q, 100_000, replacement=True, generator=g)
    w = is_correction(p.log()[y][None], q.log()[y][None], torch.ones(1, len(y)), cap=10.0)[0]
    assert abs(float((w * f[y]).mean() - (p * f).sum())) < 0.03
    assert abs(float(f[y].mean() - (p * f).sum())) > 0.2


def test_merged_state_matches_merge_and_unload():
    from alignbook.models import toy_tokenizer, toy_model, add_lora

    tok = toy_tokenizer()
    m = add_lora(toy_model(tok, num_hidden_layers=1), r=4, alpha=8)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    want = copy.deepcopy(m).merge_and_unload().state_dict()
    got = merged_state(m)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


class FakeEngine:
    "Samples with the policy's own `generate` and reports log(0.5) for every token (a deliberate mismatch)."

    def __init__(self):
        self.synced = 0

    def sync(self, policy):
        self.policy, self.synced = policy, self.synced + 1
        return self

    def sample_completions(self, tokenizer, prompts, *args):
        s = sample_completions(self.policy, tokenizer, prompts, *args)
        s.sampler_logps = [[math.log(0.5)] * len(c) for c in s.completion_ids]
        return s


def test_engine_logps_reach_the_loss(monkeypatch):
    "Rows sampled by an engine carry its log-probs; the micro-batch's TIS weights are min(π_θ/π_engine, C)."
    from alignbook.lm import rltrain

    fake = FakeEngine()
    monkeypatch.setattr(rltrain, "make_engine", lambda cfg: fake)
    seen = []
    real = rltrain.GPointsRollouts.micro_batch

    def spy(self, trainer, chunk, update, off_policy):
        b = real(self, trainer, chunk, update, off_policy)
        seen.append(b)
        return b

    monkeypatch.setattr(rltrain.GPointsRollouts, "micro_batch", spy)
    kw = dict(max_steps=1, eval_every=0, eval_size=2, hands_per_step=2, group_size=2, max_new_tokens=16)
    h = rltrain.train_rl(get_config("grpo", engine_tis_cap=2.0, **kw), progress=False)["history"][-1]
    assert fake.synced == 1 and seen
    for b in seen:
        mask = b["completion_mask"][:, 1:].bool()
        assert torch.allclose(b["sampler"][mask], torch.tensor(math.log(0.5)))
        assert (b["sampler"][~mask] == 0).all()
        want = torch.exp(b["old"] - b["sampler"]).clamp(max=2.0) * mask
        torch.testing.assert_close(b["tis"], want)
    assert h["is_ratio_mean"] > 0 and "is_ratio_max" in h


def test_gpu_smoke_dry_path():
    "`python -m alignbook.bench.gpu_smoke --device cpu --tiny`: the code runs; figures are positive."
    from alignbook.bench.gpu_smoke import gpu_smoke

    res = gpu_smoke(["sft", "grpo", "mapo", "fpo"], steps=1, device="cpu", tiny=True, fsdp=False)
    assert res["failed"] == [], {o: r.get("error") for o, r in res["objectives"].items()}
    assert "Hub" in res["skipped"]["fpo"]  # what cannot be built offline is said, with the reason
    assert "stand_in" in res["objectives"]["mapo"]  # Stable Diffusion: the toy digits flow stands in
    for o in ("sft", "grpo"):
        r = res["objectives"][o]
        assert r["train_tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["lora"], (o, r)
    assert res["objectives"]["grpo"]["tokens_per_s"] > res["objectives"]["grpo"]["train_tokens_per_s"]


@SLOW
def test_gpu_smoke_every_objective():
    from alignbook.bench.gpu_smoke import gpu_smoke

    res = gpu_smoke(steps=1, device="cpu", tiny=True, fsdp=False)
    assert res["failed"] == [], {o: r.get("error") for o, r in res["objectives"].items() if not r["ok"]}


def test_row_sampler_draws_from_softmax_at_temperature():
    "Gumbel-max with a generator per row samples softmax(z/T); top-p cuts the tail as generate does."
    from alignbook.lm.rollout import RowSampler

    z = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    n, T = 20000, 0.7
    picks = RowSampler(range(n), T)(None, z.repeat(n, 1)).argmax(1)
    freq = torch.bincount(picks, minlength=5).float() / n
    want = torch.softmax(z / T, 0)
    assert (freq - want).abs().max() < 4 * math.sqrt(0.25 / n), (freq, want)
    again = RowSampler(range(n), T)(None, z.repeat(n, 1)).argmax(1)
    assert torch.equal(picks, again)  # the seeds fix the draws
    nucleus = RowSampler(range(2000), 1.0, top_p=0.5)(None, z.repeat(2000, 1)).argmax(1)
    assert set(nucleus.tolist()) == {0}  # softmax(z) puts 0.64 on token 0: the 0.5-nucleus is token 0 alone
    with pytest.raises(ValueError, match="row seeds"):
        RowSampler([1, 2], T)(None, z.repeat(3, 1))


def test_data_parallel_rl_refuses_what_it_cannot_split():
    from alignbook.lm.rltrain import _check_cfg, validate_data_parallel, _check_shardable

    toy, gpu = get_config("grpo"), get_config("grpo", "gpu")
    assert (toy.rollout_seeding, gpu.rollout_seeding) == ("round", "episode")
    with pytest.raises(ValueError, match="set rollout_seeding=episode"):
        validate_data_parallel(toy, 2)
    validate_data_parallel(toy.replace(rollout_seeding="episode"), 2)
    with pytest.raises(ValueError, match="hands_per_step=2 is fewer than the 4 processes: each plays"):
        validate_data_parallel(toy.replace(rollout_seeding="episode", hands_per_step=2), 4)
    with pytest.raises(ValueError, match="an update has 3 rows for 4 processes"):
        _check_shardable([[1] * 5, [1] * 3], 4)
    with pytest.raises(ValueError, match="rollout_seeding must be one of"):
        _check_cfg(toy.replace(rollout_seeding="hand"), "grpo")
    for name in ("online-dpo", "distill", "rewriter"):  # every rollout loop refuses an unknown seeding
        with pytest.raises(ValueError, match="rollout_seeding must be one of"):
            validate_data_parallel(get_config(name).replace(rollout_seeding="hand"), 1)


def test_vllm_engine_gives_each_row_its_seed(monkeypatch):
    "With row seeds the engine sends one request per row, each with its seed (a fake vllm records them)."
    import sys, types
    from alignbook.models import toy_tokenizer

    sent = []

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class Out:
        def __init__(self, ids):
            self.token_ids, self.logprobs = ids, [{t: types.SimpleNamespace(logprob=-1.0)} for t in ids]

    class LLM:
        def generate(self, prompts, sps, use_tqdm=False):
            sent.extend((p["prompt_token_ids"], sp.kw) for p, sp in zip(prompts, sps))
            return [types.SimpleNamespace(outputs=[Out([5, 6])] * sp.kw["n"]) for sp in sps]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))
    engine = object.__new__(eng.VLLMEngine)
    engine.llm = LLM()
    tok = toy_tokenizer()
    s = engine.sample_completions(tok, ["ab", "cd"], n=2, temperature=1.0, row_seeds=[7, 8, 9, 10])
    assert [kw["seed"] for _, kw in sent] == [7, 8, 9, 10]
    assert all(kw["n"] == 1 for _, kw in sent)
    assert sent[0][0] == sent[1][0] != sent[2][0]  # prompt-major, as `sample_completions`
    assert len(s) == 4 and s.sampler_logps[0] == [-1.0, -1.0]
    sent.clear()
    engine.sample_completions(tok, ["ab", "cd"], n=2, temperature=1.0, seed=3)
    assert [(kw["seed"], kw["n"]) for _, kw in sent] == [(3, 2), (4, 2)]  # a seed per prompt otherwise


@pytest.mark.parametrize("n,world", [(8, 2), (7, 3), (2, 4), (0, 2)])
def test_shares_cover_a_round_once(n, world):
    "Shares of a round are contiguous, in order, cover it once, and number episodes as one process would."
    from alignbook.lm.rltrain import hand_share, share

    xs = list(range(n))
    parts = [share(xs, k, world) for k in range(world)]
    assert sum(parts, []) == xs
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    firsts = [hand_share(xs, 3, k, world)[1] for k in range(world)]
    assert firsts == [3 * sum(len(p) for p in parts[:k]) for k in range(world)]
