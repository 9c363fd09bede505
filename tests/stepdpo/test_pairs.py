import json
import math
from pathlib import Path

import pytest

from reward_models.base import RewardModel
from reward_models.types import DataError, StepPair
from stepdpo.pairs import build_step_pairs, load_pairs, save_pairs, select_pair
from stepdpo.sampling import SampledSolution, SampledStep, StepSampler
from stepdpo.tasks.arith import STEP_FORMAT, check_solution, checker_reward_model, make_samples


class ScriptedSampler:
    """Returns fixed candidates: for the crafted-group tests of the outcome counts only."""

    step_format = STEP_FORMAT

    def __init__(self, solutions, next_steps):
        self.solutions, self.next_steps = solutions, next_steps

    def sample_solution_details(self, prompts, k=4, max_steps=8, prefixes=None):
        return [[SampledSolution(steps=list(s), finished=True) for s in self.solutions[p]] for p in prompts]

    def sample_next_steps(self, prompts, prefixes=None, k=4):
        return [[SampledStep(text=t, is_final=False, truncated=False, context_ids=[], token_ids=[])
                 for t in self.next_steps[(p, len(pre))]] for p, pre in zip(prompts, prefixes)]


class TableRM(RewardModel):
    """Scores a step by a lookup table on its text; counts batched calls; optional std."""

    def __init__(self, table, std=None):
        self.table, self.std, self.calls = table, std or {}, 0

    def score_steps(self, prompts, steps):
        self.calls += 1
        return [[self.table[s] for s in st] for st in steps]

    def score_steps_with_uncertainty(self, prompts, steps):
        return self.score_steps(prompts, steps), [[self.std.get(s, 0.0) for s in st] for st in steps]


def test_select_pair_outcomes():
    assert select_pair([0.9, 0.1, 0.6]) == ("pair", 0, 1)
    assert select_pair([0.9, 0.7]) == ("all_good", None, None)
    assert select_pair([0.1, 0.2]) == ("all_bad", None, None)
    assert select_pair([0.4, 0.4], threshold=None) == ("tie", None, None)
    assert select_pair([0.9, 0.1], min_margin=0.9) == ("tie", None, None)
    assert select_pair([0.6, 0.9, 0.2], rejected=2) == ("pair", 1, 2)
    assert select_pair([float("nan"), 0.8, 0.1]) == ("pair", 1, 2)


def test_per_depth_counts_on_crafted_groups():
    p = "Q: 1+2+3\n"
    sampler = ScriptedSampler(
        solutions={p: [["a1", "b1", "c1"]]},
        next_steps={(p, 0): ["good", "bad"], (p, 1): ["good2", "good3"], (p, 2): ["bad2", "bad3", "bad2"]})
    rm = TableRM({"a1": 1, "b1": 1, "good": 0.9, "bad": 0.1, "good2": 0.8, "good3": 0.7, "bad2": 0.2, "bad3": 0.3})
    res = build_step_pairs([p], sampler, rm, strategy="per_depth", k=3)
    assert res.stats["n_groups"] == 3
    assert (res.stats["pairs"], res.stats["skipped_all_good"], res.stats["skipped_all_bad"]) == (1, 1, 1)
    assert rm.calls == 1  # all candidates of all groups in one scoring call
    pair = res.pairs[0]
    assert (pair.chosen, pair.rejected, pair.prefix_steps) == ("good", "bad", [])
    assert pair.margin == pytest.approx(0.8)
    tie = build_step_pairs([p], sampler, rm, strategy="per_depth", k=3, threshold=None, min_margin=0.5)
    assert tie.stats["skipped_tie"] == 2 and tie.stats["pairs"] == 1


def test_first_error_counts_uncertainty_and_nan():
    p = "Q: 5-1-1\n"
    sampler = ScriptedSampler(
        solutions={p: [["s1", "s2x", "s3"], ["s1", "s2", "Answer: 3"], ["t1x", "s2"]]},
        next_steps={(p, 1): ["s2", "s2y", "s2x"], (p, 0): ["u1", "u2"]})
    table = {"s1": 1, "s2": 1, "s3": 1, "s2x": 0, "Answer: 3": 1, "t1x": 0, "s2y": 0.2, "u1": 0.1,
             "u2": float("nan")}
    rm = TableRM(table)
    res = build_step_pairs([p], sampler, rm, strategy="first_error", k=3)
    st = res.stats
    assert st["solutions_without_error"] == 1 and st["n_groups"] == 2
    assert st["pairs"] == 1 and st["skipped_all_bad"] == 1 and st["rejected_nan"] == 1
    pair = res.pairs[0]
    assert (pair.prefix_steps, pair.chosen, pair.rejected) == (["s1"], "s2", "s2x")
    assert (pair.chosen_score, pair.rejected_score) == (1.0, 0.0)
    noisy = TableRM(table, std={"s2": 0.4})
    res = build_step_pairs([p], sampler, noisy, k=3, max_uncertainty=0.3)
    assert res.stats["skipped_uncertain"] == 1 and res.pairs == []
    nan_prefix = ScriptedSampler(solutions={p: [["u2", "s2x"]]}, next_steps={})
    res = build_step_pairs([p], nan_prefix, TableRM(table), k=3)
    assert res.stats["rejected_nan"] == 1 and res.stats["n_groups"] == 0 and res.pairs == []
    with pytest.raises(ValueError, match="uncertainty"):
        build_step_pairs([p], sampler, lambda prompt, steps: [1.0] * len(steps), k=3, max_uncertainty=0.3)


def test_checker_pairs_on_arith_are_right(arith_policy):
    """Pairs built with the task checker from a real (tiny, partly trained) policy: chosen steps
    check out and rejected steps do not, for at least 95% of pairs."""
    model, tok, cfg = arith_policy
    probs = make_samples(30, seed=11, cfg=cfg)
    sampler = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, seed=0)
    res = build_step_pairs([s.prompt for s in probs], sampler, checker_reward_model(cfg), k=4, max_steps=4)
    assert len(res.pairs) >= 10, res.stats
    assert res.stats["pairs"] + sum(v for k, v in res.stats.items() if k.startswith("skipped")) == \
        res.stats["n_groups"]
    ok = 0
    for pair in res.pairs:
        expr = cfg.expression_of(pair.prompt)
        chosen = check_solution(expr, pair.prefix_steps + [pair.chosen]).step_ok
        rejected = check_solution(expr, pair.prefix_steps + [pair.rejected]).step_ok
        ok += all(chosen) and not rejected[-1] and all(rejected[:-1])
    assert ok / len(res.pairs) >= 0.95


def test_answer_rollout_filter(arith_policy):
    model, tok, cfg = arith_policy
    probs = make_samples(10, seed=12, cfg=cfg)
    sampler = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, seed=1)

    def reaches(prompt, steps, answer):
        return check_solution(cfg.expression_of(prompt), steps).correct

    res = build_step_pairs([s.prompt for s in probs], sampler, checker_reward_model(cfg), k=4, max_steps=4,
                           answers=[s.answer for s in probs], answer_checker=reaches)
    assert res.stats["n_groups"] > 0
    for pair in res.pairs:  # with the rollout filter, every chosen step is on a path the policy completed
        assert check_solution(cfg.expression_of(pair.prompt), pair.prefix_steps + [pair.chosen]).first_error is None


def test_save_load_both_formats(tmp_path):
    pairs = [StepPair(prompt="Q: 2+3*4\n", prefix_steps=["3*4=12"], chosen="2+12=14", rejected="2+12=15",
                      chosen_score=0.9, rejected_score=0.2, weight=0.5, is_final=False, meta={"depth": 1}),
             StepPair(prompt="Q: 1+1\n", prefix_steps=[], chosen="1+1=2", rejected="1+1=3")]
    path = save_pairs(tmp_path / "p.jsonl", pairs)
    assert load_pairs(path) == pairs
    assert [f.name for f in tmp_path.iterdir()] == ["p.jsonl"]  # no temporary file left behind
    sd = save_pairs(tmp_path / "sd.jsonl", pairs, format="step_dpo")
    row = json.loads(sd.read_text().splitlines()[0])
    assert row == {"prompt": "Q: 2+3*4\n", "initial_reason_steps": "3*4=12\n", "chosen": "2+12=14",
                   "rejected": "2+12=15"}
    back = load_pairs(sd)
    assert [(p.prompt, p.prefix_steps, p.chosen, p.rejected) for p in back] == \
        [(p.prompt, p.prefix_steps, p.chosen, p.rejected) for p in pairs]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs[1].to_dict()) + "\n" + '{"prompt": "Q", "prefix_steps": [], "chosen": "",'
                   ' "rejected": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 2, field 'chosen'"):
        load_pairs(bad)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="row 1"):
        load_pairs(bad)


def test_margin_is_finite():
    with pytest.raises(DataError):
        StepPair(prompt="Q", prefix_steps=[], chosen="a", rejected="b", chosen_score=math.nan)


def test_first_error_on_given_solutions_samples_no_solutions():
    """solutions= replaces the first round of sampling: the same pairs, without calling the sampler for it."""
    p = "Q: 5-1-1\n"
    sols = {p: [["s1", "s2x", "s3"], ["s1", "s2", "Answer: 3"]]}
    sampler = ScriptedSampler(solutions=sols, next_steps={(p, 1): ["s2", "s2y"]})
    rm = TableRM({"s1": 1, "s2": 1, "s3": 1, "s2x": 0, "Answer: 3": 1, "s2y": 0.2})
    expected = build_step_pairs([p], sampler, rm, k=2)

    class NoSolutions(ScriptedSampler):
        def sample_solution_details(self, *a, **kw):
            raise AssertionError("solutions were given: the sampler must not sample them again")

    given = build_step_pairs([p], NoSolutions(sols, sampler.next_steps), rm, k=2, solutions=[sols[p]])
    assert [x.to_dict() for x in given.pairs] == [x.to_dict() for x in expected.pairs] and len(given.pairs) == 1
    assert given.stats == expected.stats
    with pytest.raises(ValueError, match="one list of solutions per prompt"):
        build_step_pairs([p, p], sampler, rm, k=2, solutions=[sols[p]])
    with pytest.raises(DataError, match=r"solutions\[0\]\[0\]"):
        build_step_pairs([p], sampler, rm, k=2, solutions=[[42]])
    with pytest.raises(ValueError, match="first_error"):
        build_step_pairs([p], sampler, rm, strategy="per_depth", k=2, solutions=[sols[p]])


def test_outcome_pairs_by_answer_and_by_aggregated_step_scores():
    from stepdpo.pairs import build_outcome_pairs
    from stepdpo.tasks.arith import is_correct

    probs = make_samples(3, seed=5)
    good = [s.steps for s in probs]
    wrong = [s.steps[:-1] + ["Answer: 99999"] for s in probs]
    prompts = [s.prompt for s in probs]
    exprs = [s.meta["expression"] for s in probs]
    sols = [[wrong[0], good[0], wrong[0]],  # one right, two wrong: a pair
            [good[1], good[1]],  # all right: a tie
            [wrong[2]]]  # a single solution
    res = build_outcome_pairs(prompts, sols, answers=exprs, answer_checker=lambda p, s, a: is_correct(a, s))
    assert res.stats["pairs"] == 1 and res.stats["skipped_tie"] == 1 and res.stats["skipped_single"] == 1
    pair = res.pairs[0]
    assert (pair.chosen_steps, pair.rejected_steps, pair.chosen_score, pair.rejected_score) == \
        (good[0], wrong[0], 1.0, 0.0)
    # aggregated step scores: min (one bad step sinks a solution) differs from mean
    table = {"a": 0.9, "b": 0.9, "c": 0.1, "d": 0.6}
    rm = TableRM(table)
    sols = [[["a", "c"], ["d", "d"]]]  # min: 0.1 vs 0.6 -> ["d","d"] chosen; mean: 0.5 vs 0.6 -> same
    by_min = build_outcome_pairs(["Q: 1\n"], sols, rm, aggregate="min").pairs[0]
    assert by_min.chosen_steps == ["d", "d"] and by_min.chosen_score == pytest.approx(0.6)
    assert by_min.rejected_score == pytest.approx(0.1)
    sols = [[["a", "b", "c"], ["d", "d", "d"]]]  # mean 0.633 vs 0.6: the other way round
    by_mean = build_outcome_pairs(["Q: 1\n"], sols, rm, aggregate="mean").pairs[0]
    assert by_mean.chosen_steps == ["a", "b", "c"]
    # last: 0.1 vs 0.6
    assert build_outcome_pairs(["Q: 1\n"], sols, rm, aggregate="last").pairs[0].chosen_steps == ["d", "d", "d"]
    assert build_outcome_pairs(["Q: 1\n"], sols, rm, min_margin=0.6).stats["skipped_tie"] == 1
    with pytest.raises(ValueError, match="aggregate"):
        build_outcome_pairs(["Q: 1\n"], sols, rm, aggregate="max")
    with pytest.raises(ValueError, match="reward_model"):
        build_outcome_pairs(["Q: 1\n"], sols)


# -- on-policy error pairs (ErrorPairOptions) -------------------------------------------------------
class RolloutSampler:
    """Greedy-like solutions per prompt, and scripted continuations per (prompt, prefix length);
    records how it was called; optional step log-probs by text."""

    step_format = STEP_FORMAT

    def __init__(self, solutions, continuations=None, logps=None, temperature=0.0):
        self.solutions, self.continuations, self.logps = solutions, continuations or {}, logps
        self.temperature, self.calls = temperature, []

    def sample_solution_details(self, prompts, k=4, max_steps=8, prefixes=None):
        self.calls.append(("solutions", k, prefixes is not None))
        if prefixes is None:
            return [[SampledSolution(steps=list(s), finished=True) for s in self.solutions[p]][:k] for p in prompts]
        return [[SampledSolution(steps=list(pre) + list(c), finished=True) for c in self.continuations[(p, len(pre))]]
                for p, pre in zip(prompts, prefixes)]

    def sample_next_steps(self, prompts, prefixes=None, k=4):
        self.calls.append(("next_steps", k, True))
        return [[SampledStep(text=c[0], is_final=False, truncated=False, context_ids=[], token_ids=[])
                 for c in self.continuations.get((p, len(pre)), [])] for p, pre in zip(prompts, prefixes)]

    def __getattr__(self, name):
        if name == "step_logprobs" and self.__dict__.get("logps") is not None:
            return lambda prompts, prefixes, steps, finals: [self.logps[s] for s in steps]
        raise AttributeError(name)


def _exact(prompt, steps, answer):
    return check_solution(answer, steps).correct


def test_on_policy_pairs_prefer_verified_then_judge_valid():
    p1, p2, p3 = "Q: 5+3+2\n", "Q: 9-4+1\n", "Q: 2+2\n"
    sols = {p1: [["5+3=9", "9+2=11", "Answer: 11"]],  # wrong at step 0
            p2: [["9-4=5", "5+1=7", "Answer: 7"]],  # wrong at step 1
            p3: [["2+2=4", "Answer: 4"]]}  # right: never searched for errors
    conts = {(p1, 0): [["5+3=8", "8+2=10", "Answer: 10"], ["5+3=8", "8+2=11", "Answer: 11"],
                       ["3+2=5", "5+5=10", "Answer: 10"]],  # 5+3=8 twice (one verified), 3+2=5 is not a valid step
             (p2, 1): [["5+1=6", "Answer: 7"], ["5+1=6", "Answer: 5"]]}  # valid step, never verified
    sampler = RolloutSampler(sols, conts)
    answers = ["5+3+2", "9-4+1", "2+2"]
    common = dict(k=3, answers=answers, answer_checker=_exact, num_continuations=3)
    res = build_step_pairs([p1, p2, p3], sampler, checker_reward_model(), **common)
    st = res.stats
    assert st["correct_solutions"] == 1 and st["n_groups"] == 2 and st["pairs"] == 2
    by_prompt = {p.prompt: p for p in res.pairs}
    assert (by_prompt[p1].chosen, by_prompt[p1].rejected, by_prompt[p1].meta["verified"]) == ("5+3=8", "5+3=9", True)
    assert by_prompt[p1].meta["chosen_count"] == 2
    assert (by_prompt[p2].chosen, by_prompt[p2].prefix_steps, by_prompt[p2].meta["verified"]) == \
        ("5+1=6", ["9-4=5"], False)
    assert (st["chosen_verified"], st["chosen_judge_only"]) == (1, 1)
    assert ("solutions", 3, True) in sampler.calls  # continuations are full rollouts from the prefix
    # every sample is kept, labeled, for baselines trained on the same samples (e.g. RFT)
    assert [len(row) for row in res.samples] == [4, 3, 1]
    assert [(s.meta["source"], s.meta["correct"]) for s in res.samples[0]] == \
        [("solution", False), ("continuation", True), ("continuation", False), ("continuation", False)]
    assert res.samples[0][1].steps == ["5+3=8", "8+2=10", "Answer: 10"] and res.samples[2][0].meta["correct"]
    strict = build_step_pairs([p1, p2, p3], RolloutSampler(sols, conts), checker_reward_model(),
                              chosen_rule="verified", **common)
    assert [p.prompt for p in strict.pairs] == [p1] and strict.stats["skipped_unverified"] == 1
    # without answers every rule is the judge's: the right solution is searched too (no error there)
    judged = build_step_pairs([p1, p2, p3], RolloutSampler(sols, {}), checker_reward_model(), k=3)
    assert judged.stats["solutions_without_error"] == 1 and judged.stats["correct_solutions"] == 0


def test_on_policy_pairs_per_error_caps_and_logp_gap():
    p = "Q: 5+3+2\n"
    sols = {p: [["5+3=9", "9+2=11", "Answer: 11"], ["5+3=9", "9+2=12", "Answer: 12"]]}
    conts = {(p, 0): [["5+3=8", "8+2=10", "Answer: 10"], ["3+2=5", "5+5=10", "Answer: 10"],
                      ["5+3=8", "8+2=10", "Answer: 10"]]}
    common = dict(k=3, answers=["(5+3)+2"], answer_checker=_exact)
    rm = checker_reward_model()
    one = build_step_pairs([p], RolloutSampler(sols, conts, temperature=1.0), rm, **common)
    assert one.stats["duplicate_errors"] == 1 and one.stats["pairs"] == 1  # the same error in two solutions
    # (5+3)+2 accepts only 5+3 first; on 5+3+2 "3+2=5" is invalid, so one distinct valid chosen step exists
    two = build_step_pairs([p], RolloutSampler(sols, conts, temperature=1.0), rm, pairs_per_error=3, **common)
    assert two.stats["pairs"] == 1
    capped = build_step_pairs(["Q: 2+3\n", p], RolloutSampler({**sols, "Q: 2+3\n": [["2+3=6", "Answer: 6"],
                                                                                     ["2+3=4", "Answer: 4"]]},
                                                              {**conts, ("Q: 2+3\n", 0): [["2+3=5", "Answer: 5"]]},
                                                              temperature=1.0),
                              rm, k=3, answers=["2+3", "(5+3)+2"], answer_checker=_exact, max_pairs_per_prompt=1)
    assert capped.stats["capped_per_prompt"] == 1 and capped.stats["pairs"] == 2
    logps = {"5+3=8": -1.0, "5+3=9": -9.0}
    scored = build_step_pairs([p], RolloutSampler(sols, conts, logps), rm, **common)
    assert scored.pairs[0].meta["policy_logp_chosen"] == -1.0 and scored.pairs[0].meta["policy_logp_rejected"] == -9.0
    gap = build_step_pairs([p], RolloutSampler(sols, conts, logps), rm, max_logp_gap=5.0, **common)
    assert gap.pairs == [] and gap.stats["dropped_logp_gap"] == 1
    with pytest.raises(ValueError, match="step_logprobs"):
        build_step_pairs([p], RolloutSampler(sols, conts), rm, max_logp_gap=5.0, **common)


def test_pass_rate_range_and_option_checks():
    p, q = "Q: 2+3\n", "Q: 4+4\n"
    sols = {p: [["2+3=5", "Answer: 5"], ["2+3=6", "Answer: 6"]],  # pass rate 0.5
            q: [["4+4=9", "Answer: 9"], ["4+4=7", "Answer: 7"]]}  # pass rate 0.0
    conts = {(p, 0): [["2+3=5", "Answer: 5"]], (q, 0): [["4+4=8", "Answer: 8"]]}
    res = build_step_pairs([p, q], RolloutSampler(sols, conts, temperature=1.0), checker_reward_model(), k=2,
                           answers=["2+3", "4+4"],
                           answer_checker=_exact, pass_rate_range=(0.2, 0.8))
    assert res.stats["skipped_pass_rate"] == 1 and [x.prompt for x in res.pairs] == [p]
    with pytest.raises(ValueError, match="chosen_rule"):
        build_step_pairs([p], RolloutSampler(sols, conts), checker_reward_model(), chosen_rule="best")
    with pytest.raises(ValueError, match="first_error"):
        build_step_pairs([p], RolloutSampler(sols, conts), checker_reward_model(), strategy="per_depth",
                         pairs_per_error=2)
    with pytest.raises(TypeError):
        build_step_pairs([p], RolloutSampler(sols, conts), checker_reward_model(), no_such_option=1)


def test_greedy_errors_with_a_real_policy(arith_policy):
    """Greedy solutions (one per problem), continuations at temperature 0.8: every pair's
    rejected step is the greedy policy's own first error, and its stored log-prob is the one the
    policy assigns."""
    model, tok, cfg = arith_policy
    probs = make_samples(40, seed=13, cfg=cfg)
    greedy = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, temperature=0.0)
    roll = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, temperature=0.8, seed=3)
    res = build_step_pairs([s.prompt for s in probs], greedy, checker_reward_model(cfg), k=4, max_steps=4,
                           answers=[s.meta["expression"] for s in probs], answer_checker=_exact,
                           num_continuations=6, rollout_sampler=roll)
    assert res.stats["n_solutions"] == 40 and res.pairs, res.stats
    sols = greedy.sample_solution_details([p.prompt for p in res.pairs], k=1, max_steps=4)
    for pair, (sol,) in zip(res.pairs, sols):
        assert sol.steps[: len(pair.prefix_steps) + 1] == pair.prefix_steps + [pair.rejected]
    p = res.pairs[0]
    lp = greedy.step_logprobs([p.prompt], [p.prefix_steps], [p.rejected], [p.is_final])[0]
    assert p.meta["policy_logp_rejected"] == pytest.approx(lp, abs=1e-3)


def test_a_verified_chosen_step_needs_no_judge_approval():
    """As in Step-DPO, the judge locates the error and the answer verifies the chosen step: a
    rollout-verified step is chosen even when a (weak) judge scores it low; judge-only fallbacks
    still need the threshold."""
    p = "Q: 2+3\n"
    sols = {p: [["2+3=6", "Answer: 6"]]}
    conts = {(p, 0): [["2+3=5", "Answer: 5"], ["3+2=5", "Answer: 9"]]}
    rm = TableRM({"2+3=6": 0.1, "2+3=5": 0.3, "3+2=5": 0.9, "Answer: 6": 0.5, "Answer: 5": 0.5, "Answer: 9": 0.5})
    res = build_step_pairs([p], RolloutSampler(sols, conts), rm, k=2, answers=["2+3"], answer_checker=_exact)
    assert [(x.chosen, x.meta["verified"]) for x in res.pairs] == [("2+3=5", True)]
    judge = build_step_pairs([p], RolloutSampler(sols, conts), rm, k=2, answers=["2+3"], answer_checker=_exact,
                             chosen_rule="judge")
    assert [(x.chosen, x.chosen_score) for x in judge.pairs] == [("3+2=5", 0.9)]


def test_a_wrong_answer_with_no_flagged_step_puts_the_error_at_the_lowest_score():
    """A learned judge may score every step of a wrong solution above the threshold (the policy's most
    confident slips); with answers known, the lowest-scoring step is taken as the error, unless 'skip'."""
    p = "Q: 9-4+1\n"
    sols = {p: [["9-4=5", "5+1=7", "Answer: 7"]]}  # wrong at step 1
    conts = {(p, 1): [["5+1=6", "Answer: 6"]]}
    scores = {"9-4=5": 0.95, "5+1=7": 0.6, "Answer: 7": 0.7, "5+1=6": 0.9}

    def judge(prompt, steps):  # misses the slip at threshold 0.5, but ranks it lowest
        return [scores[s] for s in steps]

    common = dict(k=1, answers=["9-4+1"], answer_checker=_exact, num_continuations=1)
    res = build_step_pairs([p], RolloutSampler(sols, conts), judge, threshold=0.5, **common)
    assert res.stats["error_at_lowest_score"] == 1 and res.stats["solutions_without_error"] == 0
    (pair,) = res.pairs
    assert (pair.prefix_steps, pair.rejected, pair.chosen) == (["9-4=5"], "5+1=7", "5+1=6")
    skipped = build_step_pairs([p], RolloutSampler(sols, conts), judge, threshold=0.5, error_in_wrong="skip",
                               **common)
    assert skipped.pairs == [] and skipped.stats["solutions_without_error"] == 1
    # without answers nothing says the solution is wrong: no error is invented
    blind = build_step_pairs([p], RolloutSampler(sols, conts), judge, threshold=0.5, k=1, num_continuations=1)
    assert blind.pairs == [] and blind.stats["error_at_lowest_score"] == 0
    with pytest.raises(ValueError, match="error_in_wrong"):
        build_step_pairs([p], RolloutSampler(sols, conts), judge, error_in_wrong="first", **common)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json*")
                                         if p.name != "gsm8k.jsonl"))  # plain rows: read with --prompt_column
def test_every_route_reads_a_fixture_the_same_way(name, tmp_path):
    """One parser per format: the CLI's data reading, load_samples, load_pairs and the trainer's
    own dataset handling turn the same file into the same samples or pairs."""
    from reward_models.data import iter_file_rows, load_samples
    from reward_models.testing import tiny_causal_lm, tiny_tokenizer
    from stepdpo.commands.common import read_data
    from stepdpo.config import StepwiseDPOConfig
    from stepdpo.trainer import StepwiseDPOTrainer

    path = FIXTURES / name
    items = load_samples(path)
    assert read_data(str(path)).items == items
    pairs = [x for x in items if isinstance(x, StepPair)]
    if not pairs:
        return
    assert len(pairs) == len(items)

    def content(p):  # load_samples also records where each item came from (source, row, format)
        return {**p.to_dict(), "meta": {k: v for k, v in p.meta.items() if k not in ("source", "row", "format")}}

    assert [content(p) for p in load_pairs(path)] == [content(p) for p in pairs]
    key = [(p.prompt, list(p.prefix_steps), p.chosen, p.rejected, p.is_final) for p in pairs]
    rows = [row for _, row in iter_file_rows(path)]
    tok = tiny_tokenizer()
    args = StepwiseDPOConfig(output_dir=str(tmp_path), report_to=[], max_length=None, probe_pairs=0)
    trainer = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=args, tokenizer=tok, train_dataset=rows)
    ds = trainer.train_dataset
    assert [(r["prompt"], r["prefix_steps"], r["chosen"], r["rejected"], r["is_final"]) for r in ds] == key


def test_a_plain_model_folder_judges_on_the_same_threshold_as_self(tmp_path, tokenizer):
    """A plain causal-LM folder as reward model scores Yes/No log-odds, the policy's own judge
    probabilities: score_threshold 0.5 must split the same steps good and bad for both (it used to
    call every step bad for the folder: log-odds of 0.1 are below 0.5)."""
    from reward_models.base import load_reward_model
    from reward_models.testing import save_tiny, tiny_causal_lm
    from stepdpo.pairs import judge_threshold, threshold_hint
    from stepdpo.trainer import default_judge

    model = tiny_causal_lm(tokenizer, seed=5)
    folder = load_reward_model(save_tiny(model, tokenizer, tmp_path / "plain"))
    own = default_judge(model, tokenizer, STEP_FORMAT)
    assert (folder.score_scale, own.score_scale) == ("logodds", "probability")
    prompts = [f"Q: {a}+{b}\n" for a in range(3) for b in range(4)]
    steps = [[f"{a}+{b}={a + b + e}", f"Answer: {a + b}"] for a in range(3) for b in range(4) for e in (0,)]
    lo, pr = folder.score_steps(prompts, steps), own.score_steps(prompts, steps)
    assert [[x >= judge_threshold(folder, 0.5) for x in row] for row in lo] == \
        [[x >= judge_threshold(own, 0.5) for x in row] for row in pr]
    assert judge_threshold(folder, 0.5) == 0.0 and judge_threshold(folder, 0.8) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="probability"):
        judge_threshold(folder, 1.5)
    # a round where every step lands on one side says so, with the threshold on the judge's scale
    hint = threshold_hint({"pairs": 0, "n_groups": 4, "skipped_all_bad": 4}, 0.0, "logodds")
    assert "every candidate step scored below score_threshold (0 on the judge's logodds scale)" in hint
    assert threshold_hint({"pairs": 0, "n_groups": 0, "solutions_without_error": 6}, 0.5).startswith(
        "no step pairs: no step of the 6 searched solutions scored below")
    assert threshold_hint({"pairs": 2, "n_groups": 4, "skipped_all_bad": 2}, 0.5) is None
