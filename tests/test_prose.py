"Numbers in prose cannot go stale: the check itself, and the committed notebooks' outputs against their prose."

import json
from pathlib import Path

import pytest

from alignbook.prose import has_outputs, stale_numbers

NBS = Path(__file__).resolve().parents[1] / "nbs"


def _md(text):
    return {"cell_type": "markdown", "source": text}


def _code(src, out):
    return {"cell_type": "code", "source": src, "outputs": [{"output_type": "stream", "text": out}]}


def test_a_stale_number_is_caught_and_a_fresh_one_is_not():
    run = _code("cfg = dict(eval_size=300)", "MaPO score 0.472, win rate 0.648\n")
    section = "## What the paper found vs what we see here\n\n"
    stale = {"cells": [run, _md(section + "Ours: 0.52 and 0.77 on 400 samples.")]}
    assert [s["number"] for s in stale_numbers(stale)] == ["0.52", "0.77", "400"]
    fresh = {"cells": [run, _md(section + "Ours: 0.472 and 64.8% on 300 samples.")]}
    assert stale_numbers(fresh) == []


def test_paper_numbers_and_derivations_are_not_ours():
    nb = {"cells": [_md("## What the paper found vs what we see here\n\nHong et al. report 6.17 vs 6.03."),
                    _md("## Derivation\n\nWith β = 0.1 the logit is 0.0123.")]}
    assert stale_numbers(nb) == []


COMMITTED = sorted(NBS.glob("*.ipynb"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_outputs_support_their_prose(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    if not has_outputs(nb):
        pytest.skip("no committed outputs (make outputs writes them)")
    assert stale_numbers(nb) == [], "the prose quotes numbers its outputs do not show"
