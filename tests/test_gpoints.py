"""Tests for alignbook.lm.gpoints: solver, verifier reward table, hostile input, response parsing, revision loop."""

import json, random, time
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from alignbook.lm.gpoints import (
    CARDS,
    ID_RULE,
    OOD_RULE,
    OUT_OF_ATTEMPTS_REWARD,
    Hand,
    Rule,
    card_value,
    check_score_formula,
    check_solver,
    eval_hands,
    evaluate,
    expert_response,
    float_value,
    hand_key,
    is_solvable,
    make_sft_dataset,
    parse_toy_prompt,
    paper_prompt,
    random_formula,
    revision_prompt,
    sample_hand,
    score_formula,
    score_response,
    solve,
    toy_prompt,
)


# ---------------------------------------------------------------- rules and hands
def test_card_values():
    assert [card_value(c) for c in CARDS] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10]
    assert [card_value(c, OOD_RULE) for c in ("J", "Q", "K", "A")] == [11, 12, 13, 1]
    with pytest.raises(ValueError, match="not one of"):
        card_value("T")
    with pytest.raises(ValueError, match="not one of"):
        Hand(["K", "X"], ID_RULE)


def test_rule_random_and_validation():
    r = Rule.random(random.Random(3))
    assert all(1 <= v <= 13 for v in r.face_values) and r.target == 24
    assert toy_prompt(Hand(["J", "Q", "K", "A"], r)).split(". ")[1] == "J={} Q={} K={}".format(*r.face_values)
    with pytest.raises(ValueError, match="face_values"):
        Rule("x", (1, 2, 3, 4))
    fvs = {Rule.random(random.Random(s)).face_values for s in range(3000)}
    assert len(fvs) > 1000 and not fvs & {(10, 10, 10), (11, 12, 13)}
    r0 = random.Random(0)
    assert Rule.random(random.Random(0), exclude=()).face_values == tuple(r0.randint(1, 13) for _ in range(3))


def test_parse_toy_prompt_roundtrip():
    rng = random.Random(0)
    for rule in (ID_RULE, OOD_RULE, Rule.random(rng)):
        h = sample_hand(rng, rule, target=rng.choice([24, 12]))
        back = parse_toy_prompt(toy_prompt(h))
        assert back.cards == h.cards and back.numbers == h.numbers and back.target == h.target
    assert parse_toy_prompt(toy_prompt(Hand(["K"], OOD_RULE))).rule == OOD_RULE
    with pytest.raises(ValueError, match="not a toy"):
        parse_toy_prompt("hello")


def test_sample_hand_solvable_and_face():
    rng = random.Random(0)
    for _ in range(200):
        h = sample_hand(rng, OOD_RULE)
        assert any(c in "JQK" for c in h.cards) and is_solvable(h.numbers) and len(h.cards) == 4
    h = sample_hand(random.Random(1), ID_RULE, n_cards=3, target=10)
    assert h.target == 10 and len(h.cards) == 3 and is_solvable(h.numbers, 10)


def test_eval_hands_deterministic_and_distinct_from_training():
    a, b = eval_hands(ID_RULE, 20, seed=5), eval_hands(ID_RULE, 20, seed=5)
    assert a == b and a != eval_hands(ID_RULE, 20, seed=6)
    assert len(eval_hands(OOD_RULE)) == 234
    train = [r["prompt"][0]["content"] for r in make_sft_dataset(20, seed=5)]
    assert train != [toy_prompt(h) for h in a]


# ---------------------------------------------------------------- solver
def test_solver_known_cases():
    assert solve([1, 1, 1, 1]) is None and not is_solvable([1, 1, 1, 1])
    assert solve([3, 3, 8, 8], all_solutions=True) == ["8/(3-8/3)"]
    assert (
        solve([1, 5, 5, 5]) is not None and score_formula(solve([1, 5, 5, 5]), [1, 5, 5, 5]).correct
    )  # 5*(5-1/5)
    assert is_solvable([13, 13, 13, 13]) is False
    sols = solve([10, 3, 4, 6], all_solutions=True)
    assert len(sols) == len(set(sols)) > 1 and "3*6+10-4" in sols


def test_solver_rejects_bad_numbers():
    with pytest.raises(ValueError, match="non-negative ints"):
        solve([1.5, 2, 3, 4])
    with pytest.raises(ValueError, match="non-negative ints"):
        solve([])


def test_solver_speed_print():
    rng = random.Random(123)
    hands = [[rng.randint(1, 13) for _ in range(4)] for _ in range(200)]
    t0 = time.perf_counter()
    res = [solve(h) for h in hands]
    dt = time.perf_counter() - t0
    print(f"solve: {1e3 * dt / len(hands):.2f} ms per 4-card hand")
    assert sum(r is not None for r in res) > 100


_rules = st.sampled_from([ID_RULE, OOD_RULE])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rule=_rules)
def test_every_solution_scores_plus_five(seed, rule):
    hand = sample_hand(random.Random(seed), rule)
    sols = solve(hand.numbers, hand.target, all_solutions=True)
    assert sols and solve(hand.numbers, hand.target) is not None
    for f in sols:
        s = score_formula(f, hand.numbers, hand.target)
        assert s.reward == 5 and s.correct and s.value == 24, (f, hand, s)
        assert score_formula(f + "=24", hand.numbers).reward == 5


def _brute_force_solvable(nums, target=24):
    """Independent check: all orders x operators x the 5 bracket shapes of 4 operands, exact fractions."""
    import itertools, operator

    ops = [operator.add, operator.sub, operator.mul, lambda x, y: x / y if y else None]

    def ap(o, x, y):
        return None if x is None or y is None else o(x, y)

    for a, b, c, d in itertools.permutations([Fraction(n) for n in nums]):
        for o1, o2, o3 in itertools.product(ops, repeat=3):
            for v in (
                ap(o3, ap(o2, ap(o1, a, b), c), d),
                ap(o2, ap(o1, a, b), ap(o3, c, d)),
                ap(o3, ap(o1, a, ap(o2, b, c)), d),
                ap(o1, a, ap(o3, ap(o2, b, c), d)),
                ap(o1, a, ap(o2, b, ap(o3, c, d))),
            ):
                if v == target:
                    return True
    return False


@settings(max_examples=40, deadline=None)
@given(nums=st.lists(st.integers(1, 13), min_size=4, max_size=4), target=st.sampled_from([24, 24, 10, 36]))
def test_solvability_matches_brute_force(nums, target):
    f = solve(nums, target)
    assert (f is not None) == is_solvable(nums, target) == _brute_force_solvable(nums, target), (
        nums,
        target,
        f,
    )
    if f is not None:
        assert score_formula(f, nums, target).reward == 5


@given(seed=st.integers(0, 10_000), rule=_rules)
@settings(max_examples=30, deadline=None)
def test_expert_responses_score_plus_five(seed, rule):
    rng = random.Random(seed)
    hand = sample_hand(rng, rule)
    for style in ("toy", "paper"):
        assert score_response(expert_response(hand, rng, style), hand, style).reward == 5
        assert score_response(expert_response(hand, None, style), hand, style).reward == 5


# ---------------------------------------------------------------- reward table (hand-written)
N = [10, 3, 4, 6]


@pytest.mark.parametrize(
    "formula,reward,needle",
    [
        ("3*6+10-4", 5, "Correct solution"),
        ("3*6+10-4=24", 5, "Correct solution"),
        (" ( 3 * 6 ) + 10 - 4 ", 5, "Correct solution"),
        ("3*6+10-4=99", -1, "not the 99 it states"),  # the stated result must agree with the formula
        ("3*6+10+4", -1, "evaluates to 32, not 24"),
        ("6/3*10/4", -1, "evaluates to 5, not 24"),
        ("3*6+10-7", -4, "you used invalid numbers: [7], you didn't use numbers: [4]"),
        ("3*6+10-6", -4, "you used numbers: [6] too many times, you didn't use numbers: [4]"),
        ("3*6+10-4-7", -2, "you used invalid numbers: [7]"),
        ("3*6+10-4-4", -2, "you used numbers: [4] too many times"),
        ("3*6+10", -2, "you didn't use numbers: [4]"),
        ("3*6+10-4-7-4", -2, "invalid numbers: [7]"),  # invalid and overused share one -2
        ("3*6+10-(4", -3, "expected ')'"),
        ("3*6+10-4)", -3, "unexpected"),
        ("3*6+10--4", -3, "unary minus"),
        ("-4+3*6+10", -3, "unary minus"),
        ("3 6+10-4", -3, "unexpected"),
        ("3*6+10-4x", -3, "illegal characters"),
        ("3×6+10-4", -3, "illegal characters"),
        ("", -3, "empty formula"),
        ("=24", -3, "empty formula"),
        ("3*6+10-4.0", -3, "illegal characters"),
        ("()", -3, "expected a number"),
    ],
)
def test_reward_table(formula, reward, needle):
    s = score_formula(formula, N)
    assert s.reward == reward, s
    assert needle in s.message, s
    assert s.correct == (reward == 5)
    assert s.message.endswith(".")


def test_official_float_bug_is_fixed():
    assert 8 / (3 - 8 / 3) != 24  # float evaluation misses it
    s = score_formula("8/(3-8/3)", [3, 3, 8, 8])
    assert s.reward == 5 and s.value == Fraction(24)
    assert score_formula("8/(3-8/3)=24", [8, 3, 8, 3]).correct


def test_division_by_zero():
    s = score_formula("3/(4-4)*10+6", [10, 3, 4, 4, 6])
    assert s.reward == -1 and "divides by zero" in s.message and s.value is None


def test_wrong_value_reports_exact_fraction():
    s = score_formula("10/3+4+6", N)
    assert s.reward == -1 and s.value == Fraction(40, 3) and "40/3" in s.message


# ---------------------------------------------------------------- hostile input
HOSTILE = {
    "deep nesting": ("(" * 100_000 + "1" + ")" * 100_000, "too long"),
    "nesting within length": ("(" * 40 + "3" + ")" * 40, "nested deeper"),
    "exponent": ("9**9**9", "no **"),
    "exponent 2": ("10**3", "no **"),
    "floor div": ("10//3", "no **"),
    "huge literal": ("99999999999*99999999999", "too long (at most"),
    "1 MB": ("1" * 1_000_000, "too long"),
    "1 MB of spaces": (" " * 1_000_000, "too long"),
    "unicode digits": ("٣*٨", "illegal characters"),
    "superscript": ("2²", "illegal characters"),
    "fullwidth": ("１+２", "illegal characters"),
    "import": ("__import__('os').system('rm -rf /')", "illegal characters"),
    "lambda": ("(lambda: 1)()", "illegal characters"),
    "newline": ("3*6\n+10-4", "illegal characters"),
    "null byte": ("3*6+10-4\x00", "illegal characters"),
    "many tokens": ("1+" * 99 + "1", "tokens"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_formulas_rejected(name):
    formula, needle = HOSTILE[name]
    t0 = time.perf_counter()
    s = score_formula(formula, N)
    dt = time.perf_counter() - t0
    print(f"{name}: {1e3 * dt:.3f} ms")
    assert s.reward == -3 and not s.correct and s.value is None
    assert needle in s.message, s.message
    assert len(s.message) < 300


def test_intermediate_magnitude_bound():
    # legal, numbers on the cards, but the product explodes: rejected by the bit bound, not computed forever
    nums = [999999] * 8
    f = "*".join(["999999"] * 8)
    s = score_formula(f, nums)
    assert s.reward == -3 and "too large" in s.message


def test_non_string_formula():
    assert score_formula(None, N).reward == -3
    assert score_formula(24, N).reward == -3


# ---------------------------------------------------------------- responses
H = Hand(["K", "3", "4", "6"], ID_RULE)
HO = Hand(["K", "3", "4", "6"], OOD_RULE)


@pytest.mark.parametrize(
    "resp",
    [
        '{"number":[10,3,4,6],"formula":"3*6+10-4"}',
        '  {"number": [10, 3, 4, 6], "formula": "3*6+10-4=24"}\n',
        '```json\n{"cards": ["K","3","4","6"], "number": [10,3,4,6], "formula": "3*6+10-4=24"}\n```',
        'Sure! Here it is: {"formula": "3*6+10-4"} Hope that helps.',
        # paper style, not JSON
        "{\n  \"cards\": ['K', '3', '4', '6'],\n  \"number\": [10, 3, 4, 6],"
        "\n  \"formula\": \"3*6+10-4=24\",\n}",
        "{'formula': '3*6+10-4'}",
    ],
)
def test_response_parsing_json_and_fallback(resp):
    s = score_response(resp, H)
    assert s.reward == 5 and s.correct, s


def test_response_without_formula():
    for resp in ["24", "", "{}", '{"formula": 24}', '{"number": [10, 3, 4, 6]}', "[1,2,3]"]:
        s = score_response(resp, H)
        assert s.reward == -3 and not s.correct, (resp, s)
    assert "no formula" in score_response("nothing here", H).message
    assert score_response("x" * 1_000_000, H).reward == -3
    assert score_response(None, H).reward == -3
    with pytest.raises(ValueError, match="style"):
        score_response("{}", H, style="chat")


def test_number_field_checked_without_changing_reward():
    # OOD failure mode: reads K as 10. Formula with 10 -> -4 from the numbers check; number field -> message only.
    s = score_response('{"number":[10,3,4,6],"formula":"3*6+10-4"}', HO)
    assert s.reward == -4 and "K counts as 13, not 10" in s.message
    # correct formula but a wrong number field: still +5, with the note in the message
    s = score_response('{"number":[10,3,4,6],"formula":"13+3+4*6/... "}', HO)
    assert s.reward == -3
    good = solve(HO.numbers)
    s = score_response(json.dumps({"number": [10, 3, 4, 6], "formula": good}), HO)
    assert s.reward == 5 and s.correct and "K counts as 13, not 10" in s.message
    s = score_response(json.dumps({"number": [13, 3, 4], "formula": good}), HO)
    assert s.reward == 5 and "3 entries but there are 4 cards" in s.message
    assert score_response(expert_response(HO), HO).message == "Correct solution."


def test_prompts():
    assert toy_prompt(H) == "Cards: K 3 4 6. J=10 Q=10 K=10. Make 24."
    assert toy_prompt(Hand(["A", "J"], OOD_RULE, 12)) == "Cards: A J. J=11 Q=12 K=13. Make 12."
    p = paper_prompt(HO)
    assert (
        "Cards: ['K', '3', '4', '6']" in p
        and "'J', 'Q', and 'K' count as '11', '12', and '13' respectively" in p
    )
    assert '"formula"' in p and "24 points card game" in p
    assert "count as '10'," in paper_prompt(H)
    r = json.loads(expert_response(H, style="paper"))
    assert (
        r["cards"] == ["K", "3", "4", "6"] and r["number"] == [10, 3, 4, 6] and r["formula"].endswith("=24")
    )
    t = expert_response(H)
    assert " " not in t and set(json.loads(t)) == {"number", "formula"}


def test_expert_response_randomised():
    outs = {json.loads(expert_response(H, random.Random(s)))["formula"] for s in range(30)}
    assert len(outs) > 3


# ---------------------------------------------------------------- revision loop
def _cards(conv):
    return conv[0]["content"].split(".")[0].removeprefix("Cards: ").split()


def test_revision_prompt():
    s = score_formula("3*6+10", N)
    assert revision_prompt(s) == "You failed this trial because you didn't use numbers: [4]."
    assert OUT_OF_ATTEMPTS_REWARD == -1


def test_evaluate_revision_loop_scripted():
    hands = eval_hands(ID_RULE, 6, seed=2)
    seen = []

    def respond(convs):
        seen.append([len(c) for c in convs])
        out = []
        for c in convs:
            assert c[-1]["role"] == "user"
            n_tries = (len(c) + 1) // 2
            if n_tries == 1:
                out.append("no idea")  # -3
            elif n_tries == 2:
                assert c[-1]["content"].startswith("You failed this trial because no formula found")
                out.append('{"formula":"1+1"}')  # -2 or -4
            else:
                out.append(expert_response(Hand(_cards(c), ID_RULE)))  # +5
        return out

    r1 = evaluate(respond, hands, max_attempts=1)
    assert r1["success_rate"] == 0 and r1["mean_attempts"] == 1
    assert all(rec["return"] == -3 + OUT_OF_ATTEMPTS_REWARD for rec in r1["records"])
    seen.clear()
    r5 = evaluate(respond, hands, max_attempts=5)
    assert seen == [
        [1] * 6,
        [3] * 6,
        [5] * 6,
    ]  # conversations grow by (assistant, user) per failed attempt; solved ones drop out
    assert r5["success_rate"] == 1 and r5["first_try_success_rate"] == 0 and r5["mean_attempts"] == 3
    rec = r5["records"][0]
    assert rec["rewards"][0] == -3 and rec["rewards"][2] == 5 and rec["success"]
    assert rec["return"] == sum(rec["rewards"])
    r2 = evaluate(respond, hands, max_attempts=2)
    assert r2["success_rate"] == 0 and all(len(rec["rewards"]) == 2 for rec in r2["records"])


def test_evaluate_paper_style_and_errors():
    hands = eval_hands(OOD_RULE, 3)
    r = evaluate(
        lambda convs: [expert_response(h, style="paper") for h in hands[: len(convs)]], hands, style="paper"
    )
    assert r["success_rate"] == 1 and r["mean_reward"] == 5
    with pytest.raises(ValueError, match="replies"):
        evaluate(lambda convs: [], hands)
    with pytest.raises(ValueError, match="max_attempts"):
        evaluate(lambda convs: [], hands, max_attempts=0)


# ---------------------------------------------------------------- SFT dataset
def test_make_sft_dataset():
    ds = make_sft_dataset(30, seed=0)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 30
    for row in ds:
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        p = row["prompt"][0]["content"]
        hand = Hand(p.split(".")[0].removeprefix("Cards: ").split(), ID_RULE)
        assert score_response(row["completion"][0]["content"], hand).reward == 5
    assert make_sft_dataset(5, seed=1)[:] == make_sft_dataset(5, seed=1)[:]
    mix = make_sft_dataset(60, rules=[ID_RULE, OOD_RULE], seed=1)
    assert {r["prompt"][0]["content"].split(". ")[1] for r in mix} == {"J=10 Q=10 K=10", "J=11 Q=12 K=13"}
    paper = make_sft_dataset(3, rule=OOD_RULE, style="paper")
    assert "[Task Description]" in paper[0]["prompt"][0]["content"]


def test_sft_dataset_validates_with_shared_checker():
    data = pytest.importorskip("alignbook.data")
    data.validate_dataset(make_sft_dataset(4), "sft")


def test_sft_dataset_exclude():
    ev = eval_hands(ID_RULE, 234)
    banned = {hand_key(h) for h in ev}
    assert hand_key(Hand(["K", "3", "4", "6"])) == hand_key(Hand(["6", "4", "K", "3"]))
    assert hand_key(Hand(["K", "3", "4", "6"])) != hand_key(Hand(["K", "3", "4", "6"], OOD_RULE))
    rows = make_sft_dataset(400, seed=0, exclude=ev)
    keys = {
        hand_key(Hand(r["prompt"][0]["content"].split(".")[0].removeprefix("Cards: ").split())) for r in rows
    }
    assert not keys & banned
    assert {
        hand_key(Hand(r["prompt"][0]["content"].split(".")[0].removeprefix("Cards: ").split()))
        for r in make_sft_dataset(400, seed=0)
    } & banned  # without exclude, eval hands do appear


def test_deeply_nested_json_response():
    assert score_response("[" * 3999, H).reward == -3
    assert score_response('{"formula":' + "[" * 3900, H).reward == -3


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), nums=st.lists(st.integers(1, 13), min_size=1, max_size=5))
def test_random_formula_uses_each_number_once(seed, nums):
    f = random_formula(nums, random.Random(seed))
    s = score_formula(f, nums)
    assert s.reward in (5, -1), (f, s)  # numbers always right; value right or wrong (or divides by zero)


def test_float_value_shows_the_official_bug():
    assert float_value("8/(3-8/3)") != 24 and score_formula("8/(3-8/3)", [3, 3, 8, 8]).correct
    assert float_value("3*6+10-4=24") == 24


def test_check_helpers_discriminate():
    assert check_score_formula(score_formula, verbose=False) is None
    with pytest.raises(AssertionError, match="cases differ"):
        check_score_formula(lambda f, n, t=24: 5, verbose=False)
    with pytest.raises(AssertionError, match="ZeroDivisionError"):  # exceptions count as failures
        check_score_formula(lambda f, n, t=24: 1 / 0, verbose=False)
    assert check_solver(solve, n=50, verbose=False) is None
    with pytest.raises(AssertionError, match="solvable=True"):
        check_solver(lambda nums, t=24: None, n=50, verbose=False)
    with pytest.raises(AssertionError, match="returned"):
        check_solver(lambda nums, t=24: "+".join(map(str, nums)), n=50, verbose=False)


def test_held_out_hands_cover_both_rules_and_card_order():
    from alignbook.lm import gpoints

    hs = gpoints.held_out_hands()
    assert len(hs) == 468 and {h.rule.name for h in hs} == {"id", "ood"}
    h = hs[0]
    assert gpoints.is_held_out(gpoints.Hand(tuple(reversed(h.cards)), h.rule, h.target))
