import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepdpo.tasks.arith import (
    ERROR_KINDS,
    ArithConfig,
    ParseError,
    check_solution,
    evaluate,
    extract_answer,
    gold_steps,
    inject_error,
    make_samples,
    make_splits,
    parse_expression,
    random_problem,
    render,
)

HARD = ArithConfig(min_steps=2, max_steps=6, min_operand=1, max_operand=30, ops="+-*", paren_prob=0.6,
                   allow_negative=True, max_value=10**6)


def test_parse_and_render_round_trip():
    rng = random.Random(0)
    for _ in range(300):
        tree = random_problem(rng, HARD)
        assert parse_expression(render(tree)) == tree
    assert evaluate(parse_expression("(3+4)*2-5")) == 9
    assert evaluate(parse_expression("2-3-4")) == -5  # left associative
    assert evaluate(parse_expression("2*(3+4)*5")) == 70
    assert render(parse_expression("2-(3-4)")) == "2-(3-4)"


@pytest.mark.parametrize("cfg", [ArithConfig(), HARD, ArithConfig(min_steps=6, max_steps=6, ops="*+")])
def test_gold_solutions_check_out(cfg):
    rng = random.Random(1)
    for _ in range(200):
        tree = random_problem(rng, cfg)
        steps = gold_steps(tree)
        assert cfg.min_steps + 1 <= len(steps) <= cfg.max_steps + 1
        res = check_solution(render(tree), steps)
        assert res.correct and res.first_error is None and res.labels == [1.0] * len(steps)
        assert extract_answer(steps) == evaluate(tree)


def test_difficulty_knobs():
    rng = random.Random(2)
    easy = ArithConfig(min_steps=2, max_steps=2, ops="+", start_min=2, start_max=5, max_operand=3)
    for _ in range(50):
        expr = render(random_problem(rng, easy))
        assert expr.count("+") == 2 and "(" not in expr and "*" not in expr
    assert any("(" in render(random_problem(rng, HARD)) for _ in range(50))
    with pytest.raises(ValueError):
        ArithConfig(max_steps=7)
    with pytest.raises(ValueError):
        ArithConfig(ops="/")


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_injected_errors_are_found_at_the_returned_index(kind):
    rng = random.Random(3)
    cfg = ArithConfig(min_steps=3, max_steps=5, ops="+-*", paren_prob=0.3, allow_negative=True)
    for _ in range(100):
        tree = random_problem(rng, cfg)
        steps, idx, got_kind = inject_error(tree, rng, cfg, kind=kind)
        assert got_kind == kind
        res = check_solution(render(tree), steps)
        assert res.first_error == idx and not res.correct
        assert res.step_ok == [i < idx for i in range(len(steps))]
        assert steps[:idx] == gold_steps(tree)[:idx]  # steps before the error are the gold ones
        assert steps[-1].startswith("Answer: ")  # the error is propagated to an answer


def test_checker_accepts_any_legal_order_and_rejects_illegal_ones():
    assert check_solution("2*3+4*5", ["4*5=20", "2*3=6", "6+20=26", "Answer: 26"]).correct
    assert check_solution("2+3*4", ["2+3=5", "5*4=20", "Answer: 20"]).first_error == 0  # precedence
    assert check_solution("9-3+2", ["3+2=5"]).first_error == 0  # left associativity
    assert check_solution("2+3", ["2+3=5"]).correct is False  # no answer yet, but no error either
    assert check_solution("2+3", ["2+3=5"]).first_error is None
    assert check_solution("2+3", ["Answer: 5"]).first_error == 0  # answer before reducing
    assert check_solution("2+3", ["2+3=5", "Answer: 5", "1+1=2"]).first_error == 2
    assert check_solution("2+3", [" 2 + 3 = 5 ", "Answer:5"]).correct  # spacing is tolerated
    assert check_solution("3-7", ["3-7=-4", "Answer: -4"]).correct


HOSTILE = ["__import__('os').system('echo x')", "1e999999", "9**9**9**9", "1" * 10_000, "9" * 10_000 + "=1",
           "1+1=2" + " " * 10_000, "(" * 5000 + "1" + ")" * 5000, "2+3=5\x00", "Answer: 9" * 2000, "∞+1=∞"]


@pytest.mark.parametrize("step", HOSTILE, ids=lambda s: repr(s[:20]))
def test_hostile_steps_are_invalid_quickly(step, capfd):
    t0 = time.perf_counter()
    res = check_solution("2+3", [step, "Answer: 5"])
    assert time.perf_counter() - t0 < 0.5
    assert res.step_ok[0] is False and res.first_error == 0
    assert capfd.readouterr().out == ""  # nothing was executed


@pytest.mark.parametrize("expr", ["__import__('os')", "1e9", "9**9", "(" * 100 + "1" + ")" * 100, "1" * 500, "2//3"])
def test_hostile_problems_raise_parse_errors(expr):
    with pytest.raises(ParseError):
        parse_expression(expr)


@settings(max_examples=300, deadline=200)
@given(st.text(max_size=300))
def test_checker_never_crashes_on_arbitrary_text(text):
    res = check_solution("12+7-3", [text, "Answer: 16"])
    assert len(res.step_ok) == 2
    extract_answer(text)


@settings(max_examples=200, deadline=200)
@given(st.from_regex(r"-?\d{1,25}[-+*/^]-?\d{1,25}=-?\d{1,40}", fullmatch=True))
def test_checker_on_near_valid_steps(step):
    res = check_solution("12+7", [step])
    assert res.step_ok[0] == (step == "12+7=19")


def test_samples_and_splits_are_deterministic():
    a = make_samples(50, seed=5, error_rate=0.5)
    b = make_samples(50, seed=5, error_rate=0.5)
    c = make_samples(50, seed=6, error_rate=0.5)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [s.to_dict() for s in a] != [s.to_dict() for s in c]
    assert len({s.prompt for s in a}) == 50
    for s in a:
        res = check_solution(s.meta["expression"], s.steps)
        assert res.first_error == s.meta["first_error"]
        assert res.labels == s.labels
        assert s.prompt == f"Q: {s.meta['expression']}\n"
    assert 10 < sum(s.meta["first_error"] is not None for s in a) < 40

    d1, d2 = make_splits(seed=1, n_train=80, n_test=20), make_splits(seed=1, n_train=80, n_test=20)
    assert d1["train"].to_list() == d2["train"].to_list() and d1["test"].to_list() == d2["test"].to_list()
    assert make_splits(seed=2, n_train=80, n_test=20)["test"].to_list() != d1["test"].to_list()
    assert not {r["prompt"] for r in d1["train"]} & {r["prompt"] for r in d1["test"]}
    assert set(d1["train"].column_names) == {"prompt", "steps", "labels", "answer", "meta"}


def test_expression_of_inverts_prompt():
    cfg = ArithConfig(prompt_template="Problem: {expr}\nSolution:\n")
    assert cfg.expression_of(cfg.prompt("1+2")) == "1+2"
    with pytest.raises(ValueError):
        cfg.expression_of("Q: 1+2\n")


HOSTILE_ATOMS = ["__import__('os').system('echo pwned')", "9**9**9**9", "(" * 60, ")" * 60, "1" * 400, "\x00",
                 "\ud7ff", "1e308", "Answer: ", "=", "--1", "\n", "ки", "0x1f", "lambda: 0"]


@settings(max_examples=200, deadline=500)
@given(st.lists(st.one_of(st.sampled_from(HOSTILE_ATOMS), st.text(max_size=40),
                          st.from_regex(r"[-+*()0-9 ]{0,30}", fullmatch=True)), max_size=6),
       st.lists(st.text(max_size=60), max_size=4))
def test_checker_reward_model_on_hostile_prompts_and_steps(parts, steps):
    """Model or user text in the *prompt* (the problem side) is parsed, never executed: the
    checker answers one score in {0, 1} per step, and fast."""
    from stepdpo.tasks.arith import STEP_FORMAT, checker_reward_model

    prompt = "Q: " + "".join(parts) + "\n"
    steps = [s for s in steps if s.strip() and STEP_FORMAT.separator not in s] or ["1+1=2"]
    t0 = time.perf_counter()
    (scores,) = checker_reward_model().score_steps([prompt], [steps])
    assert len(scores) == len(steps) and set(scores) <= {0.0, 1.0}
    assert time.perf_counter() - t0 < 0.5


def test_habit_variant_writes_a_systematic_slip_at_a_known_rate():
    import re

    from stepdpo.tasks.arith import habit_applies, habit_steps, make_samples, parse_expression

    assert habit_steps(parse_expression("16+9-3"), "carry", 0.0, random.Random(0)) == ["16+9=25", "25-3=22",
                                                                                        "Answer: 22"]
    assert habit_steps(parse_expression("23-7+1"), "borrow", 1.0, random.Random(0)) == ["23-7=26", "26+1=27",
                                                                                         "Answer: 27"]
    samples = make_samples(2000, seed=3, habit="carry", habit_rate=0.5)
    eligible = slipped = 0
    for s in samples:
        for step in s.steps[:-1]:
            a, op, b, c = re.match(r"(-?\d+)([-+*])(\d+)=(-?\d+)", step).groups()
            if habit_applies("carry", int(a), op, int(b)):
                eligible += 1
                slipped += int(c) != int(a) + int(b)
        assert s.meta["habit_errors"] == 0 or s.meta["first_error"] is not None
        assert s.answer == str(evaluate(parse_expression(s.meta["expression"])))  # the true value, always
    assert eligible > 1000 and abs(slipped / eligible - 0.5) < 0.05
    assert 0.2 < sum(s.meta["first_error"] is not None for s in samples) / len(samples) < 0.6
    with pytest.raises(ValueError, match="habit"):
        make_samples(5, seed=0, habit="typo", habit_rate=0.5)
