"Tests for alignbook.lm.dpo: ln 2 at init, parity with TRL's formulas, gradient direction, bad input."

import math, pytest, torch
import torch.nn.functional as F
from alignbook.lm.dpo import dpo_loss, preference_metrics, DPO_LOSS_TYPES

LN2 = math.log(2)


def rand(n=64, seed=0, scale=40.0):
    g = torch.Generator().manual_seed(seed)
    return [-torch.rand(n, generator=g, dtype=torch.float64) * scale for _ in range(4)]


def trl_formula(w, rej, rw, rl, beta, loss_type, eps, nw=None, nl=None):
    "TRL 1.16 DPOTrainer._compute_loss formulas (objectives.md §2), written independently."
    cw, cl = w - rw, rej - rl
    d = cw - cl
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d)
    if loss_type == "hinge":
        return torch.relu(1 - beta * d)
    if loss_type == "ipo":
        return ((cw / nw.clamp(min=1) - cl / nl.clamp(min=1)) - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 3.0])
def test_parity_with_trl_formula(loss_type, beta):
    x = rand(seed=int(beta * 100))
    g = torch.Generator().manual_seed(7)
    nw, nl = torch.randint(1, 50, (64,), generator=g), torch.randint(1, 50, (64,), generator=g)
    eps = 0.2 if loss_type == "robust" else 0.0
    got, rw, rl = dpo_loss(
        *x, beta=beta, loss_type=loss_type, label_smoothing=eps, chosen_lengths=nw, rejected_lengths=nl
    )
    want = trl_formula(*x, beta, loss_type, eps, nw, nl)
    assert got.shape == (64,)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rw, beta * (x[0] - x[2]))
    torch.testing.assert_close(rl, beta * (x[1] - x[3]))


def test_sigmoid_matches_trl_current_when_no_smoothing():
    x = rand(seed=3)
    torch.testing.assert_close(
        dpo_loss(*x, beta=0.1)[0], -F.logsigmoid(0.1 * ((x[0] - x[2]) - (x[1] - x[3])))
    )


def test_cdpo_smoothing():
    x = rand(seed=4)
    d = (x[0] - x[2]) - (x[1] - x[3])
    want = -0.9 * F.logsigmoid(0.1 * d) - 0.1 * F.logsigmoid(-0.1 * d)
    torch.testing.assert_close(dpo_loss(*x, label_smoothing=0.1)[0], want)


@pytest.mark.parametrize(
    "loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.3), ("robust", 0.0), ("robust", 0.25)]
)
def test_ln2_at_init(loss_type, eps):
    w, rej, _, _ = rand(seed=5)
    loss, rw, rl = dpo_loss(
        w, rej, w.clone(), rej.clone(), beta=0.7, loss_type=loss_type, label_smoothing=eps
    )
    torch.testing.assert_close(loss, torch.full_like(loss, LN2))
    assert rw.abs().max() == 0 and rl.abs().max() == 0


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_gradient_direction(loss_type):
    w = torch.full((3,), -20.0, requires_grad=True)
    rej = torch.full((3,), -25.0, requires_grad=True)
    kw = (
        dict(chosen_lengths=torch.tensor([3, 4, 5]), rejected_lengths=torch.tensor([6, 2, 5]))
        if loss_type == "ipo"
        else {}
    )
    loss = dpo_loss(
        w,
        rej,
        torch.full((3,), -21.0),
        torch.full((3,), -24.0),
        loss_type=loss_type,
        label_smoothing=0.1 if loss_type == "robust" else 0.0,
        **kw,
    )[0]
    loss.sum().backward()
    assert (w.grad < 0).all() and (rej.grad > 0).all()
    w2 = w.detach() + 0.5  # raising the chosen log-prob lowers the loss
    loss2 = dpo_loss(
        w2,
        rej.detach(),
        torch.full((3,), -21.0),
        torch.full((3,), -24.0),
        loss_type=loss_type,
        label_smoothing=0.1 if loss_type == "robust" else 0.0,
        **kw,
    )[0]
    assert (loss2 < loss.detach()).all()


def test_bad_input():
    z = torch.zeros(4)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        dpo_loss(z, z, torch.zeros(3), z)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(z, z, z, z, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(z, z, z, z, beta=-0.1)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(z, z, z, z, loss_type="nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(z, z, z, z, loss_type="ipo")
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(z, z, z, z, loss_type="ipo", chosen_lengths=torch.ones(3), rejected_lengths=torch.ones(4))


def test_metrics_trl_names_and_strict_accuracy():
    w, rej, _, _ = rand(seed=6)
    _, rw, rl = dpo_loss(w, rej, w, rej)
    m = preference_metrics(rw, rl, w, rej)
    assert set(m) == {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    }
    assert m["rewards/accuracies"] == 0.0 and m["rewards/margins"] == 0.0
    m2 = preference_metrics(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert m2["rewards/accuracies"] == 0.5 and m2["rewards/margins"] == 0.5


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_pipeline_parity_with_trl_dpotrainer(loss_type, tmp_path):
    "TRL's DPOTrainer.compute_loss and our pipeline agree on the same model, batch and β; tokenisation too."
    import copy, warnings

    warnings.filterwarnings("ignore")
    from trl import DPOConfig, DPOTrainer
    from alignbook.models import toy_model, toy_tokenizer
    from alignbook.lm.prefdata import gpoints_preferences
    from alignbook.data import tokenize_preference, collate_preference
    from alignbook.lm.reference import CopyReference
    from alignbook.lm.preftrain import paired_loss_fn
    from alignbook.config import get_config

    tok = toy_tokenizer()
    m = toy_model(tok, num_hidden_layers=2, hidden_size=64, intermediate_size=128)
    ref = copy.deepcopy(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ds = gpoints_preferences(4, seed=0).select_columns(["prompt", "chosen", "rejected"])
    eps = 0.2 if loss_type == "robust" else 0.0
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        beta=0.3,
        loss_type=[loss_type],
        label_smoothing=eps,
        report_to="none",
        use_cpu=True,
        max_length=128,
        save_strategy="no",
    )
    tr = DPOTrainer(model=m, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(4)])
    ours = collate_preference(tokenize_preference(ds, tok, 128), tok.pad_token_id)
    for k in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(ours[k], batch[k]), k
    m.eval()
    with torch.no_grad():
        want = tr.compute_loss(m, batch)
        got, metrics = paired_loss_fn(
            "dpo",
            get_config("dpo", "toy", beta=0.3, loss_type=loss_type, label_smoothing=eps),
            CopyReference(ref),
        )(m, ours)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
