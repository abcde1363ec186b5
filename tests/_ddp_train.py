"Train the toy model a few steps and save its weights; run alone or under torchrun (see test_train.py)."

import sys, torch
from safetensors.torch import save_file
from alignbook.config import Config, COMMON
from alignbook.models import toy_tokenizer, toy_model
from alignbook.data import tokenize_sft, collate_sft
from alignbook.lm.logps import sequence_logps
from alignbook.train import Trainer

out = sys.argv[1]
torch.set_num_threads(1)
tok = toy_tokenizer()
rows = tokenize_sft(
    [{"prompt": f"{a}+{b}=", "completion": str(a + b) * (1 + a % 3)} for a in range(10) for b in range(10)],
    tok,
    32,
)


def loss_fn(model, b):
    lp = sequence_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    return -lp.token_logps.sum() / lp.n_tokens.sum(), {}


cfg = Config(
    {
        **COMMON,
        "objective": "ddp",
        "batch_size": 8,
        "lr": 3e-3,
        "max_steps": 3,
        "log_every": 1,
        "device": "cpu",
    }
)
t = Trainer(
    toy_model(tok, num_hidden_layers=1),
    cfg,
    loss_fn=loss_fn,
    train_data=rows,
    collate_fn=lambda rs: collate_sft(rs, tok.pad_token_id),
    weight_fn=lambda b: int(b["completion_mask"][:, 1:].sum()),
)
t.fit()
if t.is_main:
    save_file({n: p.detach().contiguous() for n, p in t.unwrapped.named_parameters()}, out)
    print("losses", [r["loss"] for r in t.history])
