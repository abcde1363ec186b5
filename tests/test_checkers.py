"`check_*` is reserved for exercise checkers: None when the answer is right, AssertionError with a hint if not."

import ast
import importlib
from pathlib import Path

import pytest
import torch

PKG = Path(__file__).resolve().parents[1] / "alignbook"
CHECKERS = sorted(
    [
        (p, node)
        for p in PKG.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("check_")
    ],
    key=lambda pn: (str(pn[0]), pn[1].lineno),
)


def _where(p, node):
    return f"{p.relative_to(PKG)}:{node.lineno} {node.name}"


@pytest.mark.parametrize("p,node", CHECKERS, ids=lambda x: getattr(x, "name", ""))
def test_checker_returns_none(p, node):
    assert isinstance(node.returns, ast.Constant) and node.returns.value is None, (
        f"{_where(p, node)}: annotate `-> None` (a checker returns nothing when the answer is right)"
    )
    returns = [n for n in ast.walk(node) if isinstance(n, ast.Return) and n.value is not None]
    assert not returns, (
        f"{_where(p, node)}: returns a value at line {returns[0].lineno}; raise AssertionError"
    )


def test_checkers_found():
    assert len(CHECKERS) >= 20


def _pairs():
    "(checker, a right answer, a wrong answer, a word of the hint) for checkers that once returned strings."
    from alignbook.config import check_layering
    from alignbook.lm.logps import check_logps, completion_logps
    from alignbook.lm.rltrain import check_terminal_rewards, terminal_rewards
    from alignbook.lm.rollout import check_pack_batch, pack_batch
    from alignbook.lm.pg import check_grpo_advantages, grpo_advantages
    from alignbook.lm.sae import check_topk_relu, topk_relu
    from alignbook.lm.fpo import check_feature_deviation, feature_deviation

    def layering(common, obj, over):
        if set(over) - set(common):
            raise KeyError(set(over) - set(common))
        return {**common, **obj, **over}

    return [
        (check_layering, layering, lambda c, o, v: {**c, **o, **v}, "unknown key"),
        (check_layering, layering, lambda c, o, v: {**c, **o}, "later layers"),
        (check_layering, layering, lambda c, o, v: 1 / 0, "ZeroDivision"),
        (
            check_logps,
            lambda lg, i, m: completion_logps(lg, i, m)[0].sum(1),
            lambda lg, i, m: lg.sum((1, 2)),
            "shift",
        ),
        (check_logps, lambda lg, i, m: completion_logps(lg, i, m)[0].sum(1), lambda lg, i, m: 0.0, "tensor"),
        (check_terminal_rewards, terminal_rewards, lambda r, m: m * 0, "expected"),
        (check_pack_batch, pack_batch, lambda p, c, pad: {}, "missing key"),
        (check_grpo_advantages, grpo_advantages, lambda r, G: r, "expected"),
        (check_topk_relu, topk_relu, lambda p, k: p, "negative"),
        (
            check_feature_deviation,
            feature_deviation,
            lambda p, r, k: feature_deviation(p, r, k, "reference"),
            "indices",
        ),
    ]


def test_string_checkers_now_raise():
    torch.manual_seed(0)
    for check, right, wrong, hint in _pairs():
        assert check(right) is None, check.__name__
        with pytest.raises(AssertionError, match=hint):
            check(wrong)


def test_renamed_validators_are_importable():
    assert callable(importlib.import_module("alignbook.cli").validate_run_dir)
    assert callable(importlib.import_module("alignbook.diffusion.compare").assert_comparison)
