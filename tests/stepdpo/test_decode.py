import math

import pytest

from reward_models.rules import FunctionRewardModel
from stepdpo.decode import best_of_n, step_beam_search, vote_answers
from stepdpo.sampling import StepSampler
from stepdpo.tasks.arith import STEP_FORMAT, ArithConfig, checker_reward_model, extract_answer, is_correct


class CountingRM:
    """A user reward model with only get_rewards_for_steps; counts calls (batched use)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def score_steps(self, prompts, steps):
        self.calls += 1
        return self.inner.score_steps(prompts, steps)


def _problems(cfg, n=24):
    from stepdpo.tasks.arith import make_samples

    return make_samples(n, seed=123, cfg=cfg)


def test_best_of_n_with_checker_beats_a_single_sample(arith_policy):
    model, tok, cfg = arith_policy
    samples = _problems(ArithConfig(**{k: getattr(cfg, k) for k in ("min_steps", "max_steps", "ops", "start_min",
                                                                      "start_max", "min_operand", "max_operand")}))
    prompts = [s.prompt for s in samples]
    judge = CountingRM(checker_reward_model(cfg))
    sampler = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=16, temperature=1.0, seed=0)
    picked = best_of_n(sampler, judge, prompts, n=6, max_steps=4, keep_candidates=True)
    assert judge.calls == 1  # all candidates of all prompts scored in one batched call
    single = [row[0] for row in StepSampler(model, tok, STEP_FORMAT, max_new_tokens=16, temperature=1.0,
                                            seed=0).sample_solutions(prompts, k=1, max_steps=4)]
    acc_single = sum(is_correct(s.meta["expression"], sol) for s, sol in zip(samples, single))
    acc_best = sum(is_correct(s.meta["expression"], d.steps) for s, d in zip(samples, picked))
    # the checker picks a correct candidate whenever one exists, so best-of-6 >= pass@1 and = pass@6
    pass_n = sum(any(is_correct(s.meta["expression"], c["steps"]) for c in d.candidates)
                 for s, d in zip(samples, picked))
    assert acc_best == pass_n >= acc_single
    assert acc_best > acc_single  # with 24 problems a random policy slip leaves room (measured: ~2x)
    for d in picked:
        assert d.score == (min(d.step_scores) if d.step_scores else -math.inf)


def test_step_beam_search_with_checker_finds_valid_paths(arith_policy):
    model, tok, cfg = arith_policy
    samples = _problems(cfg, n=16)
    prompts = [s.prompt for s in samples]
    sampler = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=16, temperature=1.0, seed=1)
    judge = checker_reward_model(cfg)
    out = step_beam_search(sampler, judge, prompts, beam_width=3, expand=3, max_steps=4)
    greedy = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=16, temperature=0.0).sample_solutions(prompts, k=1,
                                                                                                      max_steps=4)
    acc_beam = sum(is_correct(s.meta["expression"], d.steps) for s, d in zip(samples, out))
    acc_greedy = sum(is_correct(s.meta["expression"], g[0]) for s, g in zip(samples, greedy))
    assert acc_beam >= acc_greedy
    assert all(d.finished for d in out if d.score == 1.0)


def test_vote_answers_plain_and_weighted():
    sols = [[["Answer: 2"], ["Answer: 3"], ["Answer: 3"], []]]
    assert vote_answers(sols, extract_answer) == [3]
    assert vote_answers(sols, extract_answer, weights=[[5.0, 1.0, 1.0, 9.0]]) == [2]
    assert vote_answers([[[]]], extract_answer) == [None]


def test_beam_search_validates_arguments(arith_policy):
    model, tok, _ = arith_policy
    with pytest.raises(ValueError):
        step_beam_search(StepSampler(model, tok), FunctionRewardModel(lambda p, s: [1.0] * len(s)), ["Q: 1+1\n"],
                         beam_width=0)
