"A tiny training run for the interruption tests: python _robust_worker.py OUT MAX_STEPS SAVE_EVERY LOG_EVERY."

import sys
from safetensors.torch import save_file
from alignbook.config import Config, COMMON
from alignbook.models import toy_tokenizer, toy_model
from alignbook.data import tokenize_sft, collate_sft
from alignbook.lm.logps import sequence_logps
from alignbook.train import Trainer, TrainingInterrupted

out, max_steps, save_every, log_every = sys.argv[1], *map(int, sys.argv[2:5])
tok = toy_tokenizer()
rows = tokenize_sft(
    [{"prompt": f"{a}*{b}=", "completion": str(a * b)} for a in range(8) for b in range(8)], tok, 32
)


def loss_fn(model, b):
    lp = sequence_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    return -lp.token_logps.sum() / lp.n_tokens.sum(), {"n": lp.n_tokens.sum()}


cfg = Config(
    {
        **COMMON,
        "objective": "t",
        "batch_size": 8,
        "grad_accum": 2,
        "lr": 3e-3,
        "max_steps": max_steps,
        "log_every": log_every,
        "save_every": save_every,
    }
)
t = Trainer(
    toy_model(tok, num_hidden_layers=1),
    cfg,
    loss_fn=loss_fn,
    train_data=rows,
    collate_fn=lambda rs: collate_sft(rs, tok.pad_token_id),
    out_dir=out,
    weight_fn=lambda b: int(b["completion_mask"][:, 1:].sum()),
)
try:
    t.fit()
except TrainingInterrupted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
save_file({n: p.detach().contiguous() for n, p in t.unwrapped.named_parameters()}, f"{out}/final.safetensors")
