"FAIL (arXiv 2602.12155): ratio, discriminator loss, rewards, advantages, pathwise gradients, loops, resume."

import math

import pytest
import torch

from alignbook.config import get_config
from alignbook.diffusion.fail import (
    cfm_draws,
    cfm_losses,
    discriminator_loss,
    fail_pd_loss,
    fail_pg_loss,
    flow_policy_ratio,
    gail_reward,
    grid_timesteps,
    group_advantages,
    make_discriminator,
    pathwise_clean_sample,
    sample_ode_last_k,
    train_fail,
)
from alignbook.diffusion.flow import MLPVelocity, sample_ode, toy_digits_flow


def test_ratio_is_one_when_old_equals_new_and_clamps():
    x = torch.tensor([0.0, 0.7, 123.0])
    assert torch.equal(flow_policy_ratio(x, x), torch.ones(3))
    r = flow_policy_ratio(torch.tensor([100.0, -100.0, 0.1]), torch.tensor([0.0, 0.0, 0.0]))
    assert torch.allclose(r, torch.tensor([math.exp(3.0), math.exp(-3.0), math.exp(0.1)]))
    assert torch.allclose(
        flow_policy_ratio(torch.tensor([2.0]), torch.tensor([0.0]), clamp=1.0), torch.tensor([math.e])
    )
    with pytest.raises(ValueError, match="must match"):
        flow_policy_ratio(torch.zeros(2), torch.zeros(3))


def test_cfm_losses_shared_draws_give_ratio_one_and_gradient_when_model_moves():
    torch.manual_seed(0)
    m = MLPVelocity(3, hidden=16, depth=1, num_classes=3)
    x, c = torch.randn(6, 3), torch.randint(0, 3, (6,))
    d = cfm_draws(x, 8, torch.Generator().manual_seed(1))
    old = cfm_losses(m, x, c, d).detach()
    new = cfm_losses(m, x, c, d)
    assert torch.equal(flow_policy_ratio(old, new), torch.ones(6))
    # a fresh set of draws gives a different Monte-Carlo estimate: the draws must be shared
    d2 = cfm_draws(x, 8, torch.Generator().manual_seed(2))
    assert not torch.allclose(cfm_losses(m, x, c, d2), old)
    loss, st = fail_pg_loss(old, new, torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0, -2.0]), clip_range=0.2)
    loss.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.net.parameters())
    assert float(st["clip_frac"]) == 0.0


def test_discriminator_loss_is_ln2_when_uninformative():
    assert abs(float(discriminator_loss(torch.zeros(5), torch.zeros(9))) - math.log(2)) < 1e-6
    good = discriminator_loss(torch.full((4,), 4.0), torch.full((4,), -4.0))
    bad = discriminator_loss(torch.full((4,), -4.0), torch.full((4,), 4.0))
    assert good < math.log(2) < bad


def test_gail_reward_convention():
    d = torch.tensor([-3.0, 0.0, 3.0])
    r = gail_reward(d)
    assert torch.allclose(
        r, -torch.log(1 - torch.sigmoid(d)), atol=1e-6
    )  # expert logit D: r = −log(1 − σ(D))
    assert torch.allclose(
        r, -torch.log(torch.sigmoid(-d)), atol=1e-6
    )  # official: ℓ_gen = −D, r = −log σ(ℓ_gen)
    assert r[0] < r[1] < r[2]


def test_group_advantages_with_and_without_expert():
    a, ae = group_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2)
    assert ae is None and torch.allclose(a[:2], torch.tensor([-1.0, 1.0]) / math.sqrt(2), atol=1e-6)
    assert torch.equal(a[2:], torch.zeros(2))
    a, ae = group_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2, torch.tensor([2.0, 1.0]))
    assert torch.allclose(a[:2], torch.tensor([-1.0, 1.0]), atol=1e-6) and abs(float(ae[0])) < 1e-6
    assert ae[1] > 0 and (a[2:] < 0).all()
    with pytest.raises(ValueError, match="one reward per group"):
        group_advantages(torch.ones(4), 2, torch.ones(3))


def test_pathwise_gradient_reaches_policy_not_discriminator():
    pol = toy_digits_flow().train()
    for kind in ("conditional", "unconditional", "flow"):
        disc = make_discriminator(kind, pol)
        pol.zero_grad(set_to_none=True)
        z, c = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
        x0 = sample_ode(pol, z, c, steps=3)
        s, s2 = grid_timesteps(3, 3, generator=torch.Generator().manual_seed(0))
        loss, _ = fail_pd_loss(pol, disc, x0, z, c, s, s2)
        loss.mean().backward()
        assert all(p.grad is None for p in disc.parameters()), kind
        assert all(
            p.requires_grad
            for p in disc.parameters()
            if p not in set(getattr(disc, "flow", pol).parameters())
        )
        assert sum(float(p.grad.abs().sum()) for p in pol.parameters() if p.grad is not None) > 0, kind


def test_implied_clean_sample_and_draft_k():
    class Exact(torch.nn.Module):
        def __init__(self, x0, eps):
            super().__init__()
            self.x0, self.eps = x0, eps

        def forward(self, x, sigma, cond=None):
            return self.eps - self.x0

    x0, eps = torch.randn(4, 5), torch.randn(4, 5)
    xh, _, _ = pathwise_clean_sample(
        Exact(x0, eps), x0, eps, None, torch.full((4,), 0.8), torch.full((4,), 0.0)
    )
    assert torch.allclose(xh, x0, atol=1e-6)
    m = MLPVelocity(5, hidden=8, depth=1)
    z = torch.randn(4, 5)
    x = sample_ode_last_k(m, z, steps=4, k=1)
    assert torch.allclose(x.detach(), sample_ode(m, z, steps=4), atol=1e-6)
    x.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def _cfg(objective, out, **kw):
    small = dict(max_steps=4, disc_warmup=1, batch_size=8, sample_steps=3, eval_every=0, final_eval_size=40)
    return get_config(
        objective, "toy", out_dir=str(out), **{**small, "log_every": 1, "save_every": 2, "cfm_draws": 2, **kw}
    )


@pytest.mark.parametrize("objective,kw", [("fail-pd", {}), ("fail-pg", {}), ("fail-pg", {"ratio": "sde"})])
def test_resume_bit_for_bit(tmp_path, objective, kw):
    full = train_fail(_cfg(objective, tmp_path / "full", **kw), progress=False)
    train_fail(_cfg(objective, tmp_path / "cut", **kw), until=2, progress=False)
    resumed = train_fail(_cfg(objective, tmp_path / "cut", **kw), progress=False)
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [r for r in full["history"] if "disc_acc" in r]
    assert rows and all(k in rows[-1] for k in ("disc_loss", "disc_acc", "reward", "gen_loss", "grad_norm"))
    if objective == "fail-pg":
        assert all(k in rows[-1] for k in ("ratio_mean", "ratio_std", "clip_frac"))
    base = toy_digits_flow().state_dict()
    assert any(not torch.equal(base[k], a["policy." + k]) for k in base)  # the policy did move


def test_gpu_preset_names_the_paper_and_bad_config_is_clear(tmp_path):
    gpu = get_config("fail-pd", "gpu", out_dir=str(tmp_path))
    assert (gpu.model, gpu.discriminator) == ("black-forest-labs/FLUX.1-dev", "Qwen/Qwen3-VL-2B-Instruct")
    assert gpu.lora and gpu.mixed_precision == "bf16" and gpu.sample_steps == 28 and gpu.disc_warmup == 25
    with pytest.raises(ValueError, match="needs dataset="):
        train_fail(gpu, progress=False)
    with pytest.raises(ValueError, match="toy critic"):
        train_fail(gpu.replace(dataset=str(tmp_path), discriminator="conditional"), progress=False)
    with pytest.raises(ValueError, match="multiple of group_size"):
        train_fail(_cfg("fail-pg", tmp_path, batch_size=6, group_size=4), progress=False)


def test_study_summary_and_table():
    from alignbook.diffusion.fail_study import markdown_table, summarise

    def run(seed, final, curve):
        return {
            "name": "PD",
            "seed": seed,
            "dist": {"mmd": final},
            "ink": 0.4,
            "fidelity": 0.9,
            "seconds": 1.0,
            "curve": [{"round": i, "dist": d} for i, d in enumerate(curve)],
        }

    rows = summarise({"runs": [run(0, 0.2, [0.4, 0.1, 0.2]), run(1, 0.3, [0.4, 0.3])]})
    assert len(rows) == 1 and rows[0]["seeds"] == 2
    assert abs(rows[0]["dist"] - 0.25) < 1e-6 and rows[0]["lo"] < 0.25 < rows[0]["hi"]
    assert abs(rows[0]["rise"] - 0.05) < 1e-6  # (0.2 − 0.1 + 0.3 − 0.3) / 2
    table = markdown_table(rows, [("run", "{name}"), ("d", "{dist:.2f}")])
    assert table.splitlines()[2] == "| PD | 0.25 |"


def test_cli_lists_the_objectives():
    from alignbook.config import load_plugins

    objs = load_plugins()
    assert {"fail-pd", "fail-pg"} <= set(objs)
    assert objs["fail-pd"].gpu["model"] == "black-forest-labs/FLUX.1-dev"


@pytest.fixture(scope="module")
def tiny_gpu_world(tmp_path_factory):
    from alignbook.diffusion.fail import build_tiny_experts, build_tiny_flux, build_tiny_vlm

    d = tmp_path_factory.mktemp("tiny_gpu")
    return build_tiny_flux(d / "flux"), build_tiny_vlm(d / "vlm"), build_tiny_experts(d / "experts", 6, 16)


def _gpu_cfg(objective, world, out, **kw):
    "The gpu preset itself, its model paths pointed at tiny local models, sized for a CPU test."
    flux, vlm, experts = world
    small = dict(resolution=16, disc_resolution=16, max_prompt_length=8, sample_steps=2, max_steps=3)
    small.update(disc_warmup=1, batch_size=2, group_size=2, cfm_draws=2, mixed_precision="no", device="cpu")
    return get_config(
        objective,
        "gpu",
        model=str(flux),
        discriminator=str(vlm),
        dataset=str(experts),
        out_dir=str(out),
        save_every=1,
        **{**small, **kw},
    )


@pytest.mark.parametrize("objective", ["fail-pd", "fail-pg"])
def test_gpu_path_trains_checkpoints_and_resumes_on_tiny_local_models(tmp_path, tiny_gpu_world, objective):
    from safetensors.torch import load_file

    full = train_fail(_gpu_cfg(objective, tiny_gpu_world, tmp_path / "full"), progress=False)
    pair = full["model"]
    trainable = {n for n, p in pair.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("disc.critic.head.") for n in trainable)
    lora_b = [p for n, p in pair.policy.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at 0: the policy moved
    rows = [r for r in full["history"] if "gen_loss" in r]
    assert rows and all(k in rows[-1] for k in ("disc_loss", "disc_acc", "reward", "grad_norm"))
    if objective == "fail-pg":
        assert all(k in rows[-1] for k in ("ratio_mean", "ratio_std", "clip_frac"))
    ck = tmp_path / "full" / "checkpoint-3" / "model.safetensors"
    assert set(load_file(str(ck))) == trainable  # LoRA + the head only: no frozen 12B weights in checkpoints
    lora = load_file(str(tmp_path / "full" / "final" / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("transformer.") and "lora_" in k for k in lora)
    from diffusers import FluxTransformer2DModel

    fresh = FluxTransformer2DModel.from_pretrained(tiny_gpu_world[0] / "transformer")
    fresh.load_lora_adapter(lora, prefix="transformer", adapter_name="fail")  # diffusers reads the final LoRA
    got = dict(fresh.named_parameters())
    for n, p in pair.policy.transformer.named_parameters():
        if "lora_B" in n:
            assert torch.equal(got[n.replace(".default.", ".fail.")].detach(), p.detach()), n
    train_fail(_gpu_cfg(objective, tiny_gpu_world, tmp_path / "cut"), until=1, progress=False)
    resumed = train_fail(_gpu_cfg(objective, tiny_gpu_world, tmp_path / "cut"), progress=False)
    a, b = pair.state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in trainable)


def test_latent_vlm_discriminator_sees_prompt_and_passes_gradient_to_latents(tiny_gpu_world):
    from alignbook.diffusion.fail import ExpertImages, load_fail_gpu

    cfg = _gpu_cfg("fail-pd", tiny_gpu_world, None)
    policy, disc, task, ref = load_fail_gpu(cfg)
    task.device = torch.device("cpu")
    x = task.expert(torch.tensor([0, 1]), None)
    assert_eq(x.shape, (2, 4, 8, 8))
    z = x.clone().requires_grad_(True)
    lg = disc(z, torch.tensor([0, 1]))
    assert_eq(lg.shape, (2,))
    assert not torch.equal(disc(x, torch.tensor([1, 0])), disc(x, torch.tensor([0, 0])))  # the prompt matters
    lg.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert (
        all(p.grad is None for p in disc.critic.vlm.parameters()) and disc.critic.head.weight.grad is not None
    )
    v = velocity(policy, x, torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
    assert_eq(v.shape, x.shape)
    assert torch.allclose(velocity(ref, x, torch.tensor([0.5, 0.5]), torch.tensor([0, 1])), v)  # LoRA B = 0
    assert len(ExpertImages(tiny_gpu_world[2])) == 6


def test_vlm_image_patches_match_the_qwen_processor():
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from alignbook.diffusion.fail import vlm_image_patches

    a = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    proc = Qwen2VLImageProcessorPil(
        patch_size=4,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        min_pixels=16,
        max_pixels=10**5,
    )
    want = proc(images=[Image.fromarray(x) for x in a], return_tensors="pt")
    x = torch.from_numpy(a).float().permute(0, 3, 1, 2) / 127.5 - 1
    vision = SimpleNamespace(patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    pix, grid = vlm_image_patches(x, vision, 16)
    assert torch.equal(grid, want["image_grid_thw"])
    assert torch.allclose(pix, want["pixel_values"], atol=1e-5)
    with pytest.raises(ValueError, match="multiple of patch"):
        vlm_image_patches(x, vision, 12)


def assert_eq(a, b):
    assert tuple(a) == tuple(b), (a, b)


from diffusers import FluxTransformer2DModel  # noqa: E402
from alignbook.diffusion.fail import build_tiny_vlm, load_flux_policy, load_vlm_discriminator  # noqa: E402
from alignbook.diffusion.flow import velocity  # noqa: E402


def test_gpu_loading_path_on_tiny_local_models(tmp_path):
    tmp = str(tmp_path)
    torch.manual_seed(0)
    FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        axes_dims_rope=(2, 2, 4),
    ).save_pretrained(f"{tmp}/pipe/transformer")
    flux = load_flux_policy(f"{tmp}/pipe", lora_r=4)
    trainable = [n for n, p in flux.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    z, cond = torch.randn(2, 4, 4, 4), torch.randn(2, 1 + 5, 32)
    assert_eq(velocity(flux, z, torch.tensor([0.7, 0.3]), cond).shape, z.shape)
    _d = cfm_draws(z, 2)
    cfm_losses(flux, z, cond, _d).mean().backward()
    assert all(p.grad is not None for n, p in flux.named_parameters() if p.requires_grad)
    build_tiny_vlm(f"{tmp}/vlm")
    vd = load_vlm_discriminator(f"{tmp}/vlm")
    ids = torch.randint(0, 190, (3, 7))
    logits = vd({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert_eq(logits.shape, (3,))
    discriminator_loss(logits[:2], logits[2:]).backward()
    assert vd.head.weight.grad is not None and all(p.grad is None for p in vd.vlm.parameters())


def test_study_resumes_from_its_partial_record(tmp_path, monkeypatch):
    import json

    from alignbook.diffusion import fail_study as fs

    name = "FAIL-PD (conditional D)"
    done = {
        "name": name,
        "seed": 0,
        "dist": {"mmd": 0.1},
        "ink": 0.4,
        "fidelity": 0.9,
        "seconds": 7.0,
        "curve": [],
    }
    part = tmp_path / "fail_smoke.partial.jsonl"
    part.write_text(json.dumps(done) + "\n" + '{"name": "half-writ')  # a run finished, then a crash mid-line

    def must_not_run(job):
        raise AssertionError(f"reran {job[0]['name']} seed {job[1]}")

    monkeypatch.setattr(fs, "_run_star", must_not_run)
    monkeypatch.setattr(
        fs, "policy_samples", lambda m, k, *a: (torch.zeros(k, 1, 8, 8), torch.arange(k) % 10)
    )
    monkeypatch.setattr(fs, "class_fidelity", lambda *a, **kw: 0.0)  # the base's row is not what is tested
    rec = fs.fail_study("smoke", seeds=1, only=name, partial=part)
    assert [r["name"] for r in rec["runs"]] == [name] and rec["run_seconds"] == 7.0
    assert rec["command"].startswith("alignbook study fail")
    assert part.read_text() == json.dumps(done) + "\n"  # the half line is gone, so the next append is whole


def test_study_sft_only_run_goes_through_the_checked_config(monkeypatch):
    from alignbook.diffusion import fail_study as fs

    monkeypatch.setattr(fs, "class_fidelity", lambda *a, **kw: 0.0)
    monkeypatch.setattr(
        fs, "policy_samples", lambda m, k, *a: (torch.zeros(k, 1, 8, 8), torch.arange(k) % 10)
    )
    rec = fs.fail_study("smoke", seeds=1, only="SFT only")
    (run,) = rec["runs"]
    assert run["overrides"]["max_steps"] == 0 and [c["round"] for c in run["curve"]] == [0]
    assert "dist" in run["curve"][0] and run["dist"]["mmd"] > 0


def test_a_partial_study_reads_with_a_half_written_line(tmp_path):
    "load_study falls back to the finished runs of a study still running, skipping a line cut mid-write."
    import json

    from alignbook.diffusion import fail_study as fs

    part = tmp_path / "fail_long.partial.jsonl"
    part.write_text(json.dumps({"name": "FAIL-PD (conditional D)", "seed": 0}) + '\n{"name": "FAIL-P')
    rec = fs.load_study(tmp_path / "fail_long.json")
    assert rec["partial"] and rec["budget"] == "long" and [r["seed"] for r in rec["runs"]] == [0]
    assert part.read_text().endswith('{"name": "FAIL-P')  # a reader does not touch the running study's file
