"Image preference data (Pick-a-Pic columns), shared noise, LoRA reference, training glue, the tiny SD path."

import math, io
import pytest, torch, datasets
from PIL import Image
from alignbook.data import DataFormatError
from alignbook.config import get_config
from alignbook.diffusion.flow import digits_unet, flow_errors, load_digits_images
from alignbook.diffusion.prefs import (
    human_labels,
    stroke_ink,
    image_to_png,
    png_to_image,
    validate_pickapic,
    load_pickapic,
    pickapic_rows,
    collate_image_prefs,
    pair_errors,
    reference_errors,
    adapters_disabled,
    add_unet_lora,
    caption_class,
    digit_caption,
    check_taste,
)
from alignbook.diffusion.dpo import (
    diffusion_dpo_loss_fn,
    sft_chosen_loss_fn,
    train_image_prefs,
)
from alignbook.diffusion.mapo import mapo_loss_fn
from alignbook.diffusion.kto import diffusion_kto_loss_fn
from alignbook.diffusion.sd import build_tiny_sd, load_latent_diffusion, LazyPickapicRows

torch.set_num_threads(1)


def toy_ds(n=6, ties=(2,)):
    x, _ = load_digits_images()
    lab = [0.5 if i in ties else float(i % 2) for i in range(n)]
    return datasets.Dataset.from_dict(
        {
            "jpg_0": [image_to_png(x[i]) for i in range(n)],
            "jpg_1": [image_to_png(x[i + 10]) for i in range(n)],
            "label_0": lab,
            "label_1": [1 - v for v in lab],
            "caption": [digit_caption(i % 10) for i in range(n)],
        }
    )


def test_human_labels_and_ties():
    a, b = -torch.ones(3, 1, 8, 8), -torch.ones(3, 1, 8, 8)
    a[0, :, 2:6, 3:5] = 1
    b[1, :, 1:7, 2:6] = 1
    assert human_labels(a, b).tolist() == [1.0, 0.0, 0.5]
    assert human_labels(b, a).tolist() == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="unknown taste"):
        human_labels(a, b, taste="slant")
    assert check_taste(stroke_ink) is None


def test_png_roundtrip_and_captions():
    x = torch.rand(1, 8, 8) * 2 - 1
    assert (png_to_image(image_to_png(x)) - x).abs().max() <= 1 / 255 + 1e-6
    assert caption_class(digit_caption(7)) == 7
    with pytest.raises(ValueError, match="names no digit"):
        caption_class("a cat")


def test_validate_errors_name_row_field_fix():
    ds = toy_ds()
    assert len(validate_pickapic(ds)) == 5 and len(validate_pickapic(ds, drop_ties=False)) == 6
    with pytest.raises(DataFormatError, match="lacks column"):
        validate_pickapic(ds.remove_columns("caption"))
    bad = datasets.Dataset.from_dict({**ds.to_dict(), "label_0": [0.0, 0.3, 0.5, 1.0, 0.0, 1.0]})
    with pytest.raises(DataFormatError, match=r"row 1: field 'label_0'.*must be 0, 0.5 or 1"):
        validate_pickapic(bad)
    bad = datasets.Dataset.from_dict({**ds.to_dict(), "label_1": [1.0] * 6})
    with pytest.raises(DataFormatError, match=r"row 1: label_0 \+ label_1"):
        validate_pickapic(bad)
    bad = datasets.Dataset.from_dict({**ds.to_dict(), "jpg_0": [b"junk"] * 6})
    with pytest.raises(DataFormatError, match="row 0: field 'jpg_0' does not decode"):
        validate_pickapic(bad)
    ties = datasets.Dataset.from_dict({**ds.to_dict(), "label_0": [0.5] * 6, "label_1": [0.5] * 6})
    with pytest.raises(DataFormatError, match="every row is a tie"):
        validate_pickapic(ties)
    with pytest.raises(DataFormatError, match="no rows"):
        validate_pickapic(ds.select([]))


def test_load_pickapic_local_files(tmp_path):
    ds = toy_ds()
    ds.to_parquet(str(tmp_path / "a.parquet"))
    assert len(load_pickapic(str(tmp_path / "a.parquet"))) == 5
    (tmp_path / "dir").mkdir()
    ds.to_parquet(str(tmp_path / "dir" / "p0.parquet"))
    assert len(load_pickapic(str(tmp_path / "dir"), n=3, drop_ties=False)) == 3
    ds.add_column("extra", list(range(6))).save_to_disk(str(tmp_path / "disk"))
    loaded = load_pickapic(str(tmp_path / "disk"))
    assert set(loaded.column_names) == {"jpg_0", "jpg_1", "label_0", "label_1", "caption"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no parquet"):
        load_pickapic(str(tmp_path / "empty"))


def test_rows_pick_the_winner():
    ds = validate_pickapic(toy_ds())
    rows = pickapic_rows(ds)
    r0 = ds[0]
    want = png_to_image(r0["jpg_0"] if r0["label_0"] == 1 else r0["jpg_1"])
    assert torch.equal(rows[0]["x_w"], want)
    b = collate_image_prefs(rows)
    assert b["x_w"].shape == (5, 1, 8, 8) and b["cond"].dtype == torch.long
    with pytest.raises(ValueError, match="empty"):
        collate_image_prefs([])


def test_pair_errors_share_noise_and_sigma():
    m = digits_unet()
    x, y = load_digits_images()
    xw, xl, c = x[:4], x[4:8], y[:4]
    nz, sg = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.rand(4)
    ew, el = pair_errors(m, xw, xl, c, nz, sg)
    torch.testing.assert_close(ew, flow_errors(m, xw, nz, sg, c), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(el, flow_errors(m, xl, nz, sg, c), atol=1e-5, rtol=1e-4)
    torch.manual_seed(1)
    a = pair_errors(m, xw, xw, c)  # drawn inside: identical images → identical errors
    torch.testing.assert_close(a[0], a[1])
    with pytest.raises(ValueError, match="same shape"):
        pair_errors(m, xw, xl[:2], c)


def test_fresh_lora_is_reference_and_dpo_is_ln2():
    torch.manual_seed(0)
    m = add_unet_lora(digits_unet(), r=4, alpha=8)
    assert all(("lora_" in n) == p.requires_grad for n, p in m.named_parameters())
    x, y = load_digits_images()
    batch = {"x_w": x[:8], "x_l": x[8:16], "cond": y[:8]}
    loss, met = diffusion_dpo_loss_fn(2500.0)(m, batch)
    assert abs(loss.item() - math.log(2)) < 1e-6 and met["implicit_acc"] == 0.5
    loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if "lora_B" in n
    )
    with pytest.raises(ValueError, match=r"needs a peft \(LoRA\) policy"):
        with adapters_disabled(digits_unet()):
            pass


def test_adapters_disabled_gives_base_after_training_step():
    base = digits_unet()
    m = add_unet_lora(digits_unet(), r=4)
    for n, p in m.named_parameters():
        if "lora_B" in n:
            p.data.normal_()
    x, y = load_digits_images()
    nz, sg = torch.randn(4, 1, 8, 8), torch.rand(4)
    rw, rl = reference_errors(m, x[:4], x[4:8], y[:4], nz, sg)
    bw, bl = pair_errors(base, x[:4], x[4:8], y[:4], nz, sg)
    torch.testing.assert_close(rw, bw, atol=1e-5, rtol=1e-4)
    mw, _ = pair_errors(m, x[:4], x[4:8], y[:4], nz, sg)
    assert not torch.allclose(mw, rw)  # adapters back on afterwards
    r2, _ = reference_errors(m, x[:4], x[4:8], y[:4], nz, sg, ref_model=base)
    torch.testing.assert_close(r2, bw)


def test_every_loss_fn_runs_and_kto_is_half_at_init():
    torch.manual_seed(0)
    m = add_unet_lora(digits_unet(), r=4)
    x, y = load_digits_images()
    batch = {"x_w": x[:6], "x_l": x[6:12], "cond": y[:6]}
    for fn in (mapo_loss_fn(), sft_chosen_loss_fn(), diffusion_kto_loss_fn()):
        loss, met = fn(m, batch)
        assert torch.isfinite(loss) and loss.ndim == 0
    loss, met = diffusion_kto_loss_fn(1000.0)(m, batch)
    assert abs(loss.item() - 0.5) < 1e-6


def test_train_image_prefs_toy_cli_path(tmp_path):
    p = tmp_path / "flow"
    digits_unet().save_pretrained(p)
    for obj in ("diffusion-dpo", "mapo"):
        cfg = get_config(
            obj,
            "toy",
            model=str(p),
            n_pairs=24,
            batch_size=8,
            max_steps=2,
            eval_size=20,
            log_every=1,
            sample_steps=2,
            out_dir=str(tmp_path / obj),
        )
        out = train_image_prefs(cfg)
        assert out["step"] == 2 and 0 <= out["win_rate_vs_base"] <= 1 and math.isfinite(out["loss"])
        assert (tmp_path / obj / "metrics.jsonl").exists() and (
            tmp_path / obj / "checkpoint-2" / "model.safetensors"
        ).exists()
    with pytest.raises(ValueError, match="unknown objective"):
        get_config("diffusion-foo", "toy")


def _jpeg(c):
    b = io.BytesIO()
    Image.new("RGB", (40, 40), c).save(b, format="JPEG")
    return b.getvalue()


def test_tiny_stable_diffusion_gpu_path(tmp_path):
    sd_dir = build_tiny_sd(tmp_path / "tiny-sd")
    sd = load_latent_diffusion(sd_dir)
    z = sd.encode_images(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert z.shape == (2, 4, 4, 4)
    with pytest.raises(OSError, match="unet/, vae/"):
        load_latent_diffusion(tmp_path / "nope")
    ds = datasets.Dataset.from_dict(
        {
            "jpg_0": [_jpeg("red"), _jpeg("blue")],
            "jpg_1": [_jpeg("green"), _jpeg("white")],
            "label_0": [1.0, 0.0],
            "label_1": [0.0, 1.0],
            "caption": ["a red cat", "a blue dog"],
        }
    )
    pq = tmp_path / "pickapic.parquet"
    ds.to_parquet(str(pq))
    rows = LazyPickapicRows(load_pickapic(str(pq)), size=32)
    assert rows[1]["x_w"].mean() > 0.9
    cfg = get_config(
        "diffusion-dpo",
        "gpu",
        model=str(sd_dir),
        dataset=str(pq),
        resolution=32,
        n_pairs=2,
        batch_size=2,
        grad_accum=1,
        max_steps=1,
        mixed_precision="no",
        device="cpu",
        warmup_steps=0,
        log_every=1,
        lora_r=4,
        lora_alpha=4,
        save_every=0,
        eval_every=0,
        gradient_checkpointing=False,
        out_dir=str(tmp_path / "run"),
    )
    out = train_image_prefs(cfg)
    assert abs(out["loss"] - math.log(2)) < 1e-5  # fresh LoRA on the SD path: ln 2


def test_ref_model_is_honoured_by_dpo_and_kto(tmp_path):
    "ref_model=PATH gives a frozen copy of that model as the reference; its errors differ from LoRA-off ones."
    from alignbook.diffusion.preftrain import make_image_reference, PREF_LOSSES
    from alignbook.lm.reference import CopyReference, DisabledAdapterReference

    base_dir, other_dir = tmp_path / "base", tmp_path / "other"
    digits_unet(seed=0).save_pretrained(base_dir)
    digits_unet(seed=1).save_pretrained(other_dir)
    x, y = load_digits_images()
    batch = {"x_w": x[:4], "x_l": x[4:8], "cond": y[:4]}
    nz, sg = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.rand(4)
    for obj in ("diffusion-dpo", "diffusion-kto"):
        cfg = get_config(obj, "toy", model=str(base_dir))
        base = digits_unet(seed=0)
        policy = add_unet_lora(digits_unet(seed=0), r=4)
        default = make_image_reference(cfg, base)
        assert isinstance(default, DisabledAdapterReference)
        other = make_image_reference(cfg.replace(ref_model=str(other_dir)), base)
        assert isinstance(other, CopyReference) and not any(p.requires_grad for p in other.model.parameters())
        d_w, _ = reference_errors(policy, *batch.values(), nz, sg, ref_model=default)
        o_w, _ = reference_errors(policy, *batch.values(), nz, sg, ref_model=other)
        want, _ = pair_errors(digits_unet(seed=1), batch["x_w"], batch["x_l"], batch["cond"], nz, sg)
        assert not torch.allclose(d_w, o_w)
        torch.testing.assert_close(o_w, want.detach())
        torch.manual_seed(0)
        _, m_default = PREF_LOSSES[obj](cfg, default)(policy, batch)
        torch.manual_seed(0)
        _, m_other = PREF_LOSSES[obj](cfg, other)(policy, batch)
        assert abs(m_default["ref_loss"].item() - m_other["ref_loss"].item()) > 1e-4
    with pytest.raises(ValueError, match="second_adapter"):
        make_image_reference(get_config("diffusion-dpo", "toy", reference="second_adapter"), digits_unet())
