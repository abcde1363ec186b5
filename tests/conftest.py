import os

import pytest

# Tests never download anything; without this each Hugging Face import may wait for a network time-out.
for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(k, "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A one-layer toy Llama and its tokenizer, written with save_pretrained: a local 'Hub' model."
    from alignbook.models import toy_model, toy_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    tok = toy_tokenizer()
    m = toy_model(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64, seed=0)
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)
