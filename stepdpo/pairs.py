"""Build step-level preference pairs from policy samples and any reward model.

Two strategies, both batched (one ``generate`` per round of sampling, one ``score_steps``
call per batch of candidates):

* ``"first_error"`` (Step-DPO's pipeline, arXiv 2406.18629): sample solutions per prompt (with
  a greedy sampler: the one solution the policy actually gives), keep the wrong ones when answers
  are known, score their steps and take the first step scoring below ``threshold`` as the
  rejected step; sample continuations from the correct prefix before it (``rollout_sampler``,
  e.g. temperature 0.8) and take as chosen the first step of a continuation that reaches the
  right answer (``chosen_rule="prefer_verified"``: else the best step the judge scores good;
  ``"verified"``: only those; ``"judge"``: the judge alone). Options in :class:`ErrorPairOptions`
  (pairs per error, caps per problem, a log-prob-gap filter, a pass-rate window).
* ``"per_depth"``: sample one solution per prompt; at each depth sample ``k`` candidate next
  steps from its prefix (with the ``rollout_sampler`` when given); chosen = best candidate,
  rejected = worst.

Groups where every candidate is good (``skipped_all_good``), every one is bad
(``skipped_all_bad``), the best and worst differ by less than ``min_margin``
(``skipped_tie``), or the ensemble disagrees by more than ``max_uncertainty``
(``skipped_uncertain``) give no pair; the counts are in :attr:`PairBuildResult.stats`.

Pairs save to / load from JSONL (every :class:`StepPair` field) and the Step-DPO format
(``prompt``, ``initial_reason_steps``, ``chosen``, ``rejected``).

>>> select_pair([0.9, 0.2, 0.7], threshold=0.5)
('pair', 0, 1)
>>> select_pair([0.9, 0.8], threshold=0.5), select_pair([0.1, 0.2], threshold=0.5)
(('all_good', None, None), ('all_bad', None, None))

Why one ~770-line module: both pair strategies, outcome pairs and the pair files share the
selection rules and the statistics keys; the dataset side of pairs is in
:mod:`stepdpo.pair_data`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from reward_models.base import aggregate as aggregate_scores
from reward_models.base import as_reward_model
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat
from reward_models.types import DataError, StepPair

logger = logging.getLogger(__name__)

STRATEGIES = ("first_error", "per_depth")
STAT_KEYS = ("n_prompts", "n_solutions", "n_groups", "pairs", "skipped_all_good", "skipped_all_bad", "skipped_tie",
             "skipped_uncertain", "rejected_nan", "empty_steps", "truncated_steps", "solutions_without_error",
             "correct_solutions", "duplicate_errors", "skipped_unverified", "skipped_pass_rate", "capped_per_prompt",
             "chosen_verified", "chosen_judge_only", "dropped_logp_gap", "error_at_lowest_score")


def judge_threshold(rm, threshold: float | None) -> float | None:
    """``score_threshold`` (a probability of a good step) on the judge's own scale: judges that score
    log-odds (:attr:`~reward_models.base.RewardModel.score_scale`, e.g. a plain model folder's Yes/No
    verification) compare with ``log(t / (1 - t))``; probabilities and raw scores use ``t`` as given.

    >>> from reward_models.rules import FunctionRewardModel
    >>> judge = FunctionRewardModel(lambda p, s: [0.0] * len(s))
    >>> judge_threshold(judge, 0.5)
    0.5
    >>> judge.score_scale = "logodds"; judge_threshold(judge, 0.5), round(judge_threshold(judge, 0.9), 4)
    (0.0, 2.1972)
    """
    scale = getattr(rm, "score_scale", "probability")
    if threshold is None or scale != "logodds":
        return threshold
    if not 0 < threshold < 1:
        raise ValueError(f"score_threshold {threshold} is a probability (0 < t < 1); the judge scores log-odds "
                         "and compares with log(t / (1 - t))")
    return math.log(threshold) - math.log1p(-threshold)


def threshold_hint(stats: dict[str, int], threshold: float | None, scale: str = "probability") -> str | None:
    """When pair building made no pair because the judge put every step on one side of the threshold,
    a warning that says so and how to fix it; None otherwise.

    >>> threshold_hint({"pairs": 0, "n_groups": 3, "skipped_all_bad": 3}, 0.5)[:58]
    'no step pairs: every candidate step scored below score_thr'
    """
    if stats.get("pairs") or threshold is None:
        return None
    groups = stats.get("n_groups", 0)
    if groups and stats.get("skipped_all_bad", 0) == groups:
        what = "every candidate step scored below score_threshold"
    elif not groups and stats.get("solutions_without_error", 0):
        what = f"no step of the {stats['solutions_without_error']} searched solutions scored below score_threshold"
    else:
        return None
    return (f"no step pairs: {what} ({threshold:g} on the judge's {scale} scale). Check that the judge scores "
            "steps as expected, or change score_threshold")


@dataclass
class PairBuildResult:
    """Output of :func:`build_step_pairs` (step pairs) or :func:`build_outcome_pairs` (outcome
    pairs): the pairs and the count of every outcome."""

    pairs: list[Any]
    stats: dict[str, int] = field(default_factory=dict)
    samples: list[list[Any]] | None = None
    """First-error strategy: every solution the policy sampled, per prompt
    (:class:`~stepdpo.sampling.SampledSolution`; ``meta["source"]`` is ``"solution"`` or
    ``"continuation"`` (a rollout from an error's correct prefix, prefix included) and
    ``meta["correct"]`` the answer check, None without answers), so that baselines such as
    rejection-sampling fine-tuning can train on exactly the same samples."""


CHOSEN_RULES = ("verified", "prefer_verified", "judge")
ERROR_IN_WRONG = ("lowest", "skip")


@dataclass
class ErrorPairOptions:
    """Knobs of the first-error strategy beyond the judge (see :func:`build_step_pairs`).

    Attributes:
        num_solutions: solutions sampled per prompt (``None``: ``k``; with a greedy sampler 1).
        num_continuations: continuations sampled from each error's correct prefix (``None``: ``k``).
        rollout_sampler: samples the continuations (e.g. the same policy at temperature 0.8);
            ``None``: the solution sampler.
        chosen_rule: ``"verified"`` - a chosen step must start a continuation that reaches the
            right answer (needs answers; the judge's score of it does not matter: as in Step-DPO,
            the judge only locates the error); ``"prefer_verified"`` - such a step when there is
            one, else the best step the judge scores good; ``"judge"`` - the best steps by the
            judge. Without answers every rule is ``"judge"``.
        pairs_per_error: one pair per distinct chosen step, up to this many per error.
        max_pairs_per_prompt: cap on the pairs of one problem (``None``: no cap).
        skip_correct_solutions: with answers, look for errors only in solutions whose answer is
            wrong (Step-DPO); a judge's "error" inside a right solution is then ignored.
        max_logp_gap: drop pairs that the sampling policy already ranks right by more than this
            many nats (``log pi(chosen) - log pi(rejected)``, summed over the step's tokens): they
            teach little (the squeezing effect, arXiv 2407.10490). Needs a sampler with
            ``step_logprobs``. The log-probs are stored in every pair's ``meta`` either way when
            the sampler has them.
        pass_rate_range: with answers, keep only problems whose sampled solutions are right at a
            rate in ``[lo, hi]`` (PRIME keeps 0.2-0.8); ``None`` keeps all.
        error_in_wrong: with answers, what to do with a solution whose answer is wrong but whose
            steps all score at least the threshold: ``"lowest"`` - its lowest-scoring step is the
            error (the answer says there is one; a learned judge misses most often the errors
            the policy is surest of, the ones worth fixing), counted as ``error_at_lowest_score``;
            ``"skip"`` - no pair (counted as ``solutions_without_error``).
    """

    num_solutions: int | None = None
    num_continuations: int | None = None
    rollout_sampler: Any = None
    chosen_rule: str = "prefer_verified"
    pairs_per_error: int = 1
    max_pairs_per_prompt: int | None = None
    skip_correct_solutions: bool = True
    max_logp_gap: float | None = None
    pass_rate_range: tuple[float, float] | None = None
    error_in_wrong: str = "lowest"

    def __post_init__(self):
        if self.chosen_rule not in CHOSEN_RULES:
            raise ValueError(f"chosen_rule must be one of {CHOSEN_RULES}, got {self.chosen_rule!r}")
        if self.error_in_wrong not in ERROR_IN_WRONG:
            raise ValueError(f"error_in_wrong must be one of {ERROR_IN_WRONG}, got {self.error_in_wrong!r}")
        for name in ("num_solutions", "num_continuations", "max_pairs_per_prompt"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.pairs_per_error < 1:
            raise ValueError(f"pairs_per_error must be >= 1, got {self.pairs_per_error}")
        if self.pass_rate_range is not None:
            lo, hi = self.pass_rate_range
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"pass_rate_range must satisfy 0 <= lo <= hi <= 1, got {self.pass_rate_range}")


def select_pair(scores: Sequence[float], threshold: float | None = 0.5, min_margin: float = 0.0,
                rejected: int | None = None) -> tuple[str, int | None, int | None]:
    """Pick ``(outcome, chosen_index, rejected_index)`` from one group's candidate scores.

    With a ``threshold``, chosen must score at least it and rejected below it; a group with no
    good (bad) candidate is ``all_bad`` (``all_good``). ``rejected`` fixes the rejected
    candidate (first-error strategy: the erroneous step). ``tie`` when the best margin is
    below ``min_margin`` (or zero). NaN scores are never picked.

    >>> select_pair([0.5, 0.5], threshold=None)
    ('tie', None, None)
    >>> select_pair([0.1, 0.3, 0.9], threshold=None, rejected=1)
    ('pair', 2, 1)
    """
    valid = [i for i, s in enumerate(scores) if not math.isnan(s) and i != rejected]
    if rejected is not None:
        if math.isnan(scores[rejected]):
            return "nan", None, None
        bad_pool = [rejected]
    else:
        bad_pool = valid
    good_pool = valid
    if threshold is not None:
        good_pool = [i for i in valid if scores[i] >= threshold]
        bad_pool = [i for i in bad_pool if scores[i] < threshold]
        if rejected is None and not good_pool:
            return "all_bad", None, None
        if rejected is None and not bad_pool:
            return "all_good", None, None
        if rejected is not None and not bad_pool:
            return "all_good", None, None
        if not good_pool:
            return "all_bad", None, None
    if not good_pool or not bad_pool:
        return "tie", None, None
    best = max(good_pool, key=lambda i: scores[i])
    worst = min(bad_pool, key=lambda i: scores[i])
    margin = scores[best] - scores[worst]
    if best == worst or margin <= 0 or margin < min_margin:
        return "tie", None, None
    return "pair", best, worst


def _score(rm, prompts: list[str], steps: list[list[str]], want_uncertainty: bool):
    """One batched scoring call; returns (scores, uncertainties or None)."""
    if not prompts:
        return [], None
    if want_uncertainty:
        scores, unc = rm.score_steps_with_uncertainty(prompts, steps)
        if unc is None:
            raise ValueError(f"max_uncertainty was set but {type(rm).__name__} reports no uncertainty; use an "
                             "ensemble reward model (score_steps_with_uncertainty) or leave max_uncertainty=None")
        return [list(map(float, s)) for s in scores], [list(map(float, u)) for u in unc]
    return [list(map(float, s)) for s in rm.score_steps(prompts, steps)], None


def _usable(step, fmt: StepFormat, stats: Counter) -> bool:
    if step.truncated:
        stats["truncated_steps"] += 1
    return _valid_text(step.text, fmt, stats)


def build_step_pairs(prompts: Sequence[str], sampler, reward_model, strategy: str = "first_error", k: int = 4,
                     threshold: float | None = 0.5, *, min_margin: float = 0.0, max_steps: int = 8,
                     answers: Sequence[Any] | None = None,
                     answer_checker: Callable[[str, list[str], Any], bool] | None = None,
                     max_uncertainty: float | None = None, step_format: StepFormat | None = None,
                     solutions: Sequence[Sequence[Any]] | None = None, progress: bool = False,
                     **error_options) -> PairBuildResult:
    """Sample from ``sampler``'s policy, judge with ``reward_model``, return step pairs + stats.

    Args:
        prompts: problems, formatted as the policy sees them.
        sampler: a :class:`~stepdpo.sampling.StepSampler` (or any object with the same methods).
        reward_model: any reward model, user object or callable accepted by
            :func:`reward_models.base.as_reward_model` (e.g. a class with only
            ``get_rewards_for_steps``), or the task checker.
        strategy: ``"first_error"`` or ``"per_depth"`` (see the module docstring).
        k: solutions per prompt and candidates per group.
        threshold: a step is good when its score is at least this (``None``: pure ranking,
            per-depth only).
        min_margin: smallest chosen-minus-rejected score difference that makes a pair.
        max_steps: step limit of sampled solutions.
        answers, answer_checker: with both, a first-error chosen step must also lead to the right
            answer: its rollout ``steps`` must satisfy ``answer_checker(prompt, steps, answer)``.
        max_uncertainty: drop pairs where the ensemble's disagreement (std) on the chosen or
            the rejected step exceeds this.
        step_format: defaults to the sampler's.
        solutions: first-error strategy only: solutions already sampled from the policy, one
            list per prompt (:class:`~stepdpo.sampling.SampledSolution` objects or step lists,
            which count as finished). They replace the first round of sampling, so outcome pairs
            (:func:`build_outcome_pairs`) and step pairs can come from the same samples.
        progress: show a tqdm bar (on stderr) over the stages - sampling, scoring, continuations,
            scoring the candidates - each one batched call over all the prompts (see :class:`_Progress`).
        **error_options: first-error strategy only, the fields of :class:`ErrorPairOptions`:
            ``num_solutions``, ``num_continuations``, ``rollout_sampler``, ``chosen_rule``,
            ``pairs_per_error``, ``max_pairs_per_prompt``, ``skip_correct_solutions``,
            ``max_logp_gap``, ``pass_rate_range``. On-policy error pairs as in Step-DPO's pipeline:
            a greedy ``sampler`` (temperature 0) finds the policy's own errors, a
            ``rollout_sampler`` at temperature 0.8 samples ``num_continuations`` rollouts from each
            error's correct prefix, and ``chosen_rule="prefer_verified"`` takes the first steps of
            rollouts that reach the answer.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings")
    if threshold is None and strategy == "first_error":
        raise ValueError("the first_error strategy needs a threshold to locate the first bad step")
    if (answers is None) != (answer_checker is None):
        raise ValueError("pass both answers and answer_checker, or neither")
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
    rm = as_reward_model(reward_model)
    fmt = step_format or getattr(sampler, "step_format", None) or DEFAULT_STEP_FORMAT
    prompts = list(prompts)
    if strategy != "first_error" and set(error_options) - {"rollout_sampler"}:
        raise ValueError(f"{sorted(set(error_options) - {'rollout_sampler'})} apply to the first_error strategy only")
    opts = ErrorPairOptions(**error_options)
    if solutions is not None:
        if strategy != "first_error":
            raise ValueError("solutions= is used by the first_error strategy only")
        solutions = as_solutions(solutions, len(prompts))
    stats: Counter = Counter({key: 0 for key in STAT_KEYS})
    stats["n_prompts"] = len(prompts)
    samples, pairs = None, []
    bar = _Progress(progress, 5 if strategy == "first_error" else 3, len(prompts))
    try:
        if strategy == "first_error":
            pairs, samples = _first_error(prompts, sampler, rm, fmt, k, threshold, min_margin, max_steps, answers,
                                          answer_checker, max_uncertainty, stats, solutions, opts, bar=bar)
        else:
            pairs = _per_depth(prompts, sampler, opts.rollout_sampler or sampler, rm, fmt, k, threshold, min_margin,
                               max_steps, max_uncertainty, stats, bar=bar)
    finally:
        bar.close(f"{len(pairs)} pairs")
    stats["pairs"] = len(pairs)
    logger.info("built %d step pairs (%s): %s", len(pairs), strategy, dict(stats))
    return PairBuildResult(pairs=pairs, stats=dict(stats), samples=samples)


def build_step_pairs_to_file(prompts: Sequence[str], sampler, reward_model, output_path: str | os.PathLike, *,
                             chunk_size: int = 8, resume: bool = True, answers: Sequence[Any] | None = None,
                             **kwargs) -> PairBuildResult:
    """:func:`build_step_pairs` over chunks of ``chunk_size`` prompts, appending each chunk's
    pairs to ``output_path`` (JSONL) as soon as they are built; a rerun with ``resume=True``
    skips finished chunks and drops a half-written one (see :mod:`reward_models.incremental`),
    so an interrupted run leaves no duplicates and loses at most one chunk of work.

    With a seeded :class:`~stepdpo.sampling.StepSampler`, chunk ``c`` samples with the seeds
    ``seed + 1000 * c + call``, so a resumed run builds the same pairs as an uninterrupted one.
    """
    from reward_models.incremental import plain_settings, rows_as, run_in_chunks

    prompts = list(prompts)
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
    items = [{"prompt": p, "answer": None if answers is None else answers[i]} for i, p in enumerate(prompts)]

    def process(c, chunk):
        if getattr(sampler, "seed", None) is not None and hasattr(sampler, "seed_as_call"):
            sampler.seed_as_call(1000 * c)  # per-chunk seeds: the same whether or not the run was resumed
        res = build_step_pairs([it["prompt"] for it in chunk], sampler, reward_model,
                               answers=None if answers is None else [it["answer"] for it in chunk], **kwargs)
        return [p.to_dict() for p in res.pairs], res.stats

    rows, stats = run_in_chunks(items, process, output_path, chunk_size=chunk_size, resume=resume,
                                settings=plain_settings(kwargs))
    pairs = rows_as(StepPair.from_dict, rows, output_path)
    stats["pairs"] = len(pairs)
    return PairBuildResult(pairs=pairs, stats=stats)


class _Progress:
    """A tqdm bar over the stages of one :func:`build_step_pairs` call (nothing when off). Each
    stage is one batched sampling or scoring call over every prompt, so the bar advances per
    stage, and its text says what is running and on how many items."""

    def __init__(self, enabled: bool, stages: int, n_prompts: int):
        self.bar, self._running = None, False
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=stages, desc=f"building step pairs ({n_prompts} prompts)", unit="stage")

    def stage(self, text: str) -> None:
        """The previous stage is done; ``text`` is running."""
        if self.bar is not None:
            if self._running:
                self.bar.update(1)
            self._running = True
            self.bar.set_postfix_str(text)

    def close(self, text: str) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total  # stages skipped (e.g. no error found) count as done
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.close()
            self.bar = None


def _nan_count(row: Sequence[float]) -> int:
    return sum(1 for v in row if math.isnan(v))


class _FoundError(NamedTuple):
    """The first error of a sampled solution: the prompt's index, the solution, the error step's
    index (its depth), the judge's score of it and the ensemble's disagreement (or None)."""

    prompt: int
    solution: Any
    depth: int
    score: float
    std: float | None

    @property
    def prefix(self) -> list[str]:
        """The steps before the error (the correct prefix rollouts continue from)."""
        return self.solution.steps[: self.depth]


def _first_error(prompts, sampler, rm, fmt, k, threshold, min_margin, max_steps, answers, checker,
                 max_uncertainty, stats, solutions=None, opts: ErrorPairOptions | None = None, *,
                 bar: _Progress | None = None) -> list[StepPair]:
    opts = opts or ErrorPairOptions()
    bar = bar or _Progress(False, 0, 0)
    n_sol, n_cont = opts.num_solutions or k, opts.num_continuations or k
    roller = opts.rollout_sampler or sampler
    verify = checker is not None
    if solutions is None and getattr(sampler, "temperature", None) == 0 and n_sol > 1:
        n_sol = 1  # greedy decoding gives the same solution every time
    if solutions is None:
        bar.stage(f"sampling {n_sol} solution{'s' if n_sol > 1 else ''} per prompt")
    sols = solutions if solutions is not None else sampler.sample_solution_details(prompts, k=n_sol,
                                                                                     max_steps=max_steps)
    stats["n_solutions"] = sum(len(row) for row in sols)
    record: list[list[Any]] = [[] for _ in prompts]
    flat = []  # (prompt index, solution) of the solutions searched for an error
    wrong_ids: set[int] = set()  # solutions whose answer is known to be wrong
    for i, row in enumerate(sols):
        right = [bool(checker(prompts[i], s.steps, answers[i])) for s in row] if verify else [False] * len(row)
        record[i] += [_recorded(s, "solution", ok if verify else None) for s, ok in zip(row, right)]
        stats["correct_solutions"] += sum(right)
        if verify and opts.pass_rate_range is not None and row:
            lo, hi = opts.pass_rate_range
            if not lo <= sum(right) / len(row) <= hi:
                stats["skipped_pass_rate"] += 1
                continue
        flat += [(i, s) for s, ok in zip(row, right) if s.steps and not (ok and opts.skip_correct_solutions)]
        wrong_ids.update(id(s) for s, ok in zip(row, right) if verify and not ok)
    bar.stage(f"scoring the steps of {len(flat)} solutions")
    scores, unc = _score(rm, [prompts[i] for i, _ in flat], [s.steps for _, s in flat], max_uncertainty is not None)
    # locate the first error of each solution; the same error in several solutions is one group
    errors: list[_FoundError] = []
    seen_errors = set()
    for n, ((i, sol), row) in enumerate(zip(flat, scores)):
        first = next((d for d, v in enumerate(row) if math.isnan(v) or v < threshold), None)
        if first is None and opts.error_in_wrong == "lowest" and id(sol) in wrong_ids and row:
            first = min(range(len(row)), key=lambda d: (row[d], d))
            stats["error_at_lowest_score"] += 1
        if first is None:
            stats["solutions_without_error"] += 1
            continue
        if math.isnan(row[first]):  # an unscorable step: neither a good prefix nor a known error
            stats["rejected_nan"] += 1
            continue
        key = (i, tuple(sol.steps[: first + 1]))
        if key in seen_errors:
            stats["duplicate_errors"] += 1
            continue
        seen_errors.add(key)
        errors.append(_FoundError(i, sol, first, row[first], None if unc is None else unc[n][first]))
    if not errors:
        return [], record
    bar.stage(f"sampling {n_cont} continuations at each of {len(errors)} errors")
    cands = _continuations(prompts, errors, roller, fmt, n_cont, max_steps, answers, checker,
                           verify and opts.chosen_rule != "judge", stats, record)
    items = [(errors[n], c) for n, row in enumerate(cands) for c in row]  # (error, candidate step)
    candidates = [c for _, c in items]
    bar.stage(f"scoring {len(items)} candidate steps")
    c_scores, c_unc = _score(rm, [prompts[err.prompt] for err, _ in items],
                             [err.prefix + [c.text] for err, c in items], max_uncertainty is not None)
    groups: dict[int, list[int]] = {}  # error index -> indices of its candidates in items
    start = 0
    for n, row in enumerate(cands):
        groups[n] = list(range(start, start + len(row)))
        start += len(row)
    rule = opts.chosen_rule if verify else "judge"
    pairs, per_prompt = [], Counter()
    for n, (i, sol, e, r_score, r_std) in enumerate(errors):
        stats["n_groups"] += 1
        good, judged_good = [], 0
        for m in groups.get(n, []):
            v, verified = c_scores[m][-1], rule != "judge" and bool(candidates[m].verified)
            if math.isnan(v):
                stats["rejected_nan"] += 1
                continue
            if verified:  # a rollout through it reached the right answer: the judge is not needed (Step-DPO)
                good.append(m)
                continue
            if v < threshold:
                continue
            judged_good += 1
            if v - r_score <= 0 or v - r_score < min_margin or rule == "verified":
                continue
            good.append(m)
        if not good:
            outcome = "all_bad" if not judged_good else ("unverified" if rule == "verified" else "tie")
            stats[f"skipped_{outcome}"] += 1
            continue
        verified_first = rule != "judge"
        good.sort(key=lambda m: (-(verified_first and bool(candidates[m].verified)), -c_scores[m][-1],
                                 -candidates[m].count, candidates[m].text))
        made = 0
        for m in good[: opts.pairs_per_error]:
            if max_uncertainty is not None and max(c_unc[m][-1], r_std) > max_uncertainty:
                stats["skipped_uncertain"] += 1
                continue
            if opts.max_pairs_per_prompt is not None and per_prompt[i] >= opts.max_pairs_per_prompt:
                stats["capped_per_prompt"] += 1
                continue
            cand = candidates[m]
            rejected_final = sol.finished and e == len(sol.steps) - 1
            stats["chosen_verified" if cand.verified else "chosen_judge_only"] += 1
            per_prompt[i] += 1
            made += 1
            pairs.append(StepPair(
                prompt=prompts[i], prefix_steps=sol.steps[:e], chosen=cand.text, rejected=sol.steps[e],
                chosen_score=c_scores[m][-1], rejected_score=r_score, is_final=bool(cand.is_final and rejected_final),
                meta={"strategy": "first_error", "depth": e, "chosen_final": cand.is_final,
                      "rejected_final": rejected_final, "verified": cand.verified, "chosen_count": cand.count}))
    bar.stage(f"policy log-probs of {len(pairs)} pairs")
    return _with_policy_logps(pairs, sampler, opts.max_logp_gap, stats), record


def _recorded(sol, source: str, correct: bool | None, **extra):
    from stepdpo.sampling import SampledSolution

    return SampledSolution(steps=list(sol.steps), finished=sol.finished, truncated=sol.truncated,
                           meta={**sol.meta, "source": source, "correct": correct, **extra})


@dataclass
class _Candidate:
    """A distinct next step sampled at one error: how often it was drawn, whether any rollout
    through it reached the right answer (None: not rolled out), whether it ended the solution."""

    text: str
    is_final: bool
    verified: bool | None
    count: int = 1


def _continuations(prompts, errors, roller, fmt, n_cont, max_steps, answers, checker, roll_out, stats, record):
    """Distinct candidate steps per error (never the rejected step): the first steps of ``n_cont``
    rollouts from the error's correct prefix, each checked against the answer (``roll_out``), or
    ``n_cont`` sampled next steps."""
    contexts = [(prompts[i], sol.steps[:e]) for i, sol, e, *_ in errors]
    out = []
    if roll_out:
        rolled = roller.sample_solution_details([p for p, _ in contexts], k=n_cont, max_steps=max_steps,
                                                prefixes=[pre for _, pre in contexts])
        for (i, sol, e, *_), row in zip(errors, rolled):
            found: dict[str, _Candidate] = {}
            for cont in row:
                record[i].append(_recorded(cont, "continuation", bool(checker(prompts[i], cont.steps, answers[i])),
                                           error_depth=e))
                if len(cont.steps) <= e:
                    stats["empty_steps"] += 1
                    continue
                text, is_final = cont.steps[e], cont.finished and len(cont.steps) == e + 1
                if cont.truncated and len(cont.steps) == e + 1:
                    stats["truncated_steps"] += 1
                    continue
                if not _valid_text(text, fmt, stats) or text == sol.steps[e]:
                    continue
                _add(found, text, is_final, record[i][-1].meta["correct"])
            out.append(list(found.values()))
        return out
    sampled = roller.sample_next_steps([p for p, _ in contexts], [pre for _, pre in contexts], k=n_cont)
    for (_i, sol, e, *_), row in zip(errors, sampled):
        found = {}
        for step in row:
            if step.truncated:
                stats["truncated_steps"] += 1
                continue
            if _valid_text(step.text, fmt, stats) and step.text != sol.steps[e]:
                _add(found, step.text, step.is_final, None)
        out.append(list(found.values()))
    return out


def _add(found: dict, text: str, is_final: bool, verified: bool | None) -> None:
    if text in found:
        c = found[text]
        c.count += 1
        c.is_final = c.is_final or is_final
        c.verified = verified if c.verified is None else (c.verified or bool(verified))
    else:
        found[text] = _Candidate(text, is_final, verified)


def _valid_text(text: str, fmt: StepFormat, stats: Counter) -> bool:
    if not text.strip():
        stats["empty_steps"] += 1
        return False
    try:
        fmt.check_step(text)
    except DataError:
        stats["empty_steps"] += 1
        return False
    return True


def _with_policy_logps(pairs: list[StepPair], sampler, max_logp_gap: float | None, stats: Counter) -> list[StepPair]:
    """Store the sampling policy's log-probs of each pair's steps in ``meta`` (when the sampler can
    score) and drop the pairs it already ranks right by more than ``max_logp_gap`` nats."""
    scorer = getattr(sampler, "step_logprobs", None)
    if scorer is None:
        if max_logp_gap is not None:
            raise ValueError("max_logp_gap needs a sampler with step_logprobs (e.g. StepSampler) to score the steps")
        return pairs
    if not pairs:
        return pairs
    rows = [(p.prompt, p.prefix_steps, s, p.is_final) for p in pairs for s in (p.chosen, p.rejected)]
    lps = scorer([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
    kept = []
    for n, p in enumerate(pairs):
        c, r = lps[2 * n], lps[2 * n + 1]
        p.meta["policy_logp_chosen"], p.meta["policy_logp_rejected"] = round(c, 4), round(r, 4)
        if max_logp_gap is not None and c - r > max_logp_gap:
            stats["dropped_logp_gap"] += 1
            continue
        kept.append(p)
    return kept


def _per_depth(prompts, sampler, roller, rm, fmt, k, threshold, min_margin, max_steps, max_uncertainty,
               stats, *, bar: _Progress | None = None) -> list[StepPair]:
    bar = bar or _Progress(False, 0, 0)
    bar.stage("sampling 1 solution per prompt")
    sols = sampler.sample_solution_details(prompts, k=1, max_steps=max_steps)
    stats["n_solutions"] = len(sols)
    ctx = [(i, row[0].steps[:d]) for i, row in enumerate(sols) for d in range(max(len(row[0].steps), 1))]
    bar.stage(f"sampling {k} candidates at each of {len(ctx)} prefixes")
    cands = roller.sample_next_steps([prompts[i] for i, _ in ctx], [pre for _, pre in ctx], k=k)
    items = []
    for n, row in enumerate(cands):
        seen = set()
        for step in row:
            if _usable(step, fmt, stats) and step.text not in seen:
                seen.add(step.text)
                items.append((n, step))
    bar.stage(f"scoring {len(items)} candidate steps")
    scores, unc = _score(rm, [prompts[ctx[n][0]] for n, _ in items], [ctx[n][1] + [st.text] for n, st in items],
                         max_uncertainty is not None)
    groups: dict[int, list[int]] = {}
    for m, (n, _st) in enumerate(items):
        groups.setdefault(n, []).append(m)
    pairs = []
    for n, (i, prefix) in enumerate(ctx):
        stats["n_groups"] += 1
        members = groups.get(n, [])
        vals = [scores[m][-1] for m in members]
        stats["rejected_nan"] += _nan_count(vals)
        outcome, best, worst = select_pair(vals, threshold, min_margin)
        if outcome != "pair":
            stats[f"skipped_{outcome}"] += 1
            continue
        mb, mw = members[best], members[worst]
        if max_uncertainty is not None and max(unc[mb][-1], unc[mw][-1]) > max_uncertainty:
            stats["skipped_uncertain"] += 1
            continue
        cb, cw = items[mb][1], items[mw][1]
        pairs.append(StepPair(
            prompt=prompts[i], prefix_steps=list(prefix), chosen=cb.text, rejected=cw.text,
            chosen_score=scores[mb][-1], rejected_score=scores[mw][-1], is_final=bool(cb.is_final and cw.is_final),
            meta={"strategy": "per_depth", "depth": len(prefix), "chosen_final": cb.is_final,
                  "rejected_final": cw.is_final}))
    return pairs


def right_samples(prompts: Sequence[str], samples) -> list:
    """The distinct solutions the answer check accepted among the samples of a pair-building round
    (:attr:`stepdpo.pairs.PairBuildResult.samples`), as :class:`~reward_models.types.StepSample`."""
    from reward_models.types import StepSample

    out = []
    for prompt, row in zip(prompts, samples or []):
        seen = set()
        for sol in row:
            if sol.meta.get("correct") and sol.steps and tuple(sol.steps) not in seen:
                seen.add(tuple(sol.steps))
                out.append(StepSample(prompt=prompt, steps=list(sol.steps)))
    return out


# -- saving and loading ----------------------------------------------------------------------------
def as_solutions(solutions: Sequence[Sequence[Any]], n_prompts: int) -> list[list[Any]]:
    """Per-prompt solution lists as :class:`~stepdpo.sampling.SampledSolution` objects (a plain
    step list counts as a finished solution); raises when the count does not match the prompts."""
    from stepdpo.sampling import SampledSolution

    if isinstance(solutions, (str, bytes)) or len(solutions) != n_prompts:
        got = "a string" if isinstance(solutions, (str, bytes)) else f"{len(solutions)} lists"
        raise ValueError(f"solutions must hold one list of solutions per prompt: got {got} for {n_prompts} prompts")
    out = []
    for i, row in enumerate(solutions):
        conv = []
        for j, sol in enumerate(row):
            if isinstance(sol, SampledSolution):
                conv.append(sol)
            elif isinstance(sol, (list, tuple)) and all(isinstance(x, str) for x in sol):
                conv.append(SampledSolution(steps=list(sol), finished=True))
            else:
                raise DataError(f"expected a SampledSolution or a list of step strings, got {type(sol).__name__}",
                                row=i, field=f"solutions[{i}][{j}]")
        out.append(conv)
    return out


@dataclass
class OutcomePair:
    """A whole-solution preference (outcome-level DPO): for ``prompt``, the solution
    ``chosen_steps`` beats ``rejected_steps``. ``*_finished`` say whether the policy ended the
    solution (the trainer then appends EOS after its last step)."""

    prompt: str
    chosen_steps: list[str]
    rejected_steps: list[str]
    chosen_score: float
    rejected_score: float
    chosen_finished: bool = True
    rejected_finished: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen_steps": list(self.chosen_steps),
                "rejected_steps": list(self.rejected_steps), "chosen_score": float(self.chosen_score),
                "rejected_score": float(self.rejected_score), "chosen_finished": bool(self.chosen_finished),
                "rejected_finished": bool(self.rejected_finished), "meta": dict(self.meta)}


OUTCOME_AGGREGATES = ("min", "last", "mean", "prod")  # the subset of reward_models.base.AGGREGATIONS that ranks solutions


def build_outcome_pairs(prompts: Sequence[str], solutions: Sequence[Sequence[Any]], reward_model=None, *,
                        aggregate: str = "min", answers: Sequence[Any] | None = None,
                        answer_checker: Callable[[str, list[str], Any], bool] | None = None,
                        min_margin: float = 0.0) -> PairBuildResult:
    """Whole-solution pairs from already sampled solutions: per prompt, the best-scored solution
    (chosen) against the worst (rejected), one pair per prompt.

    A solution's score is either its outcome by ``answer_checker(prompt, steps, answer)`` (1.0 or
    0.0; pass ``answers`` too) or its step scores from ``reward_model`` aggregated by
    ``aggregate`` (``"min"``, the usual PRM rule, ``"last"``, ``"mean"`` or ``"prod"``). Empty
    solutions are skipped; unfinished ones compete like the others (no EOS is trained after
    them). Groups with fewer than two solutions, or whose best and worst differ by no more than
    ``min_margin``, give no pair (``skipped_tie``).

    >>> from stepdpo.tasks.arith import is_correct
    >>> res = build_outcome_pairs(["Q: 1+2\\n"], [[["1+2=4", "Answer: 4"], ["1+2=3", "Answer: 3"]]],
    ...                           answers=["1+2"], answer_checker=lambda p, s, a: is_correct(a, s))
    >>> res.pairs[0].chosen_steps, res.stats["pairs"]
    (['1+2=3', 'Answer: 3'], 1)
    """
    if aggregate not in OUTCOME_AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {OUTCOME_AGGREGATES}")
    if (answers is None) != (answer_checker is None):
        raise ValueError("pass both answers and answer_checker, or neither")
    if reward_model is None and answer_checker is None:
        raise ValueError("pass a reward_model (step scores) or answers + answer_checker (outcomes)")
    prompts = list(prompts)
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
    sols = as_solutions(solutions, len(prompts))
    stats: Counter = Counter({key: 0 for key in ("n_prompts", "n_solutions", "empty_solutions", "pairs",
                                                 "skipped_tie", "skipped_single", "rejected_nan")})
    stats["n_prompts"] = len(prompts)
    flat = []
    for i, row in enumerate(sols):
        stats["n_solutions"] += len(row)
        for sol in row:
            if sol.steps:
                flat.append((i, sol))
            else:
                stats["empty_solutions"] += 1
    if answer_checker is not None:
        values = [1.0 if answer_checker(prompts[i], sol.steps, answers[i]) else 0.0 for i, sol in flat]
    else:
        rm = as_reward_model(reward_model)
        scores, _ = _score(rm, [prompts[i] for i, _ in flat], [sol.steps for _, sol in flat], False)
        values = [float("nan") if any(math.isnan(v) for v in row) else aggregate_scores(row, aggregate)
                  for row in scores]
    groups: dict[int, list[tuple[float, Any]]] = {}
    for (i, sol), v in zip(flat, values):
        if math.isnan(v):
            stats["rejected_nan"] += 1
            continue
        groups.setdefault(i, []).append((v, sol))
    pairs = []
    for i in range(len(prompts)):
        group = groups.get(i, [])
        if len(group) < 2:
            stats["skipped_single"] += 1
            continue
        best = max(range(len(group)), key=lambda j: group[j][0])
        worst = min(range(len(group)), key=lambda j: group[j][0])
        (bv, bs), (wv, ws) = group[best], group[worst]
        if bv - wv <= min_margin or bv - wv <= 0:
            stats["skipped_tie"] += 1
            continue
        pairs.append(OutcomePair(prompt=prompts[i], chosen_steps=list(bs.steps), rejected_steps=list(ws.steps),
                                 chosen_score=bv, rejected_score=wv, chosen_finished=bool(bs.finished),
                                 rejected_finished=bool(ws.finished), meta={"strategy": "outcome"}))
    stats["pairs"] = len(pairs)
    logger.info("built %d outcome pairs: %s", len(pairs), dict(stats))
    return PairBuildResult(pairs=pairs, stats=dict(stats))


def pair_to_step_dpo(pair: StepPair, step_format: StepFormat | None = None) -> dict[str, str]:
    """The Step-DPO row of a pair (``initial_reason_steps`` = the prefix laid out as text).

    >>> pair_to_step_dpo(StepPair(prompt="Q: 1+2*3\\n", prefix_steps=["2*3=6"], chosen="1+6=7", rejected="1+6=8"))
    {'prompt': 'Q: 1+2*3\\n', 'initial_reason_steps': '2*3=6\\n', 'chosen': '1+6=7', 'rejected': '1+6=8'}
    """
    fmt = step_format or DEFAULT_STEP_FORMAT
    return {"prompt": pair.prompt, "initial_reason_steps": fmt.join(pair.prefix_steps, complete=False),
            "chosen": pair.chosen, "rejected": pair.rejected}


def pair_from_row(row: dict[str, Any], step_format: StepFormat | None = None) -> StepPair:
    """A :class:`StepPair` from a row of either pair format (raises :class:`DataError`): the same
    parser as every other route (:func:`reward_models.data.parse_pair`)."""
    from reward_models.data import parse_pair

    return parse_pair(row, step_format)


def save_pairs(path: str | os.PathLike, pairs: Sequence[StepPair], format: str = "jsonl",
               step_format: StepFormat | None = None) -> Path:
    """Write pairs as JSONL (``format="jsonl"``: every field; ``"step_dpo"``: the Step-DPO
    columns). Atomic: a temporary file in the same folder is renamed over ``path``."""
    if format not in ("jsonl", "step_dpo"):
        raise ValueError(f"unknown format {format!r}; expected 'jsonl' or 'step_dpo'")
    from reward_models.safety import atomic_file

    path = Path(path)
    with atomic_file(path) as f:
        for p in pairs:
            row = p.to_dict() if format == "jsonl" else pair_to_step_dpo(p, step_format)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def load_pairs(path: str | os.PathLike, step_format: StepFormat | None = None, *, skip_invalid: bool = False,
               rejects_path: str | os.PathLike | None = None) -> list[StepPair]:
    """Read step pairs from a file (JSONL, JSON or Parquet) in either pair format, detected per row,
    with the loaders' parser (:func:`reward_models.data.parse_pair`); errors name file, row, field.

    Lines that are not UTF-8 or not JSON, rows with missing/mistyped fields or NaN scores raise
    a :class:`DataError`; with ``skip_invalid=True`` they are skipped instead, counted in a
    warning and written to ``rejects_path`` (JSONL: source, row, field, error). An empty file
    (or one with no valid row) raises.
    """
    from reward_models.data import RejectsWriter, iter_file_rows, parse_pair

    path = Path(path)
    pairs, n_rejected = [], 0
    with RejectsWriter(rejects_path) as reject:
        for n, row in iter_file_rows(path):
            try:
                if isinstance(row, DataError):
                    raise row
                pairs.append(parse_pair(row, step_format))
            except DataError as e:
                err = e.at(source=str(path), row=n)
                if not skip_invalid:
                    raise err from None
                n_rejected += 1
                reject(err, row)
    if n_rejected:
        logger.warning("%s: skipped %d invalid pair rows%s", path, n_rejected,
                       f" (written to {rejects_path})" if rejects_path else "")
    if not pairs:
        raise DataError(f"no valid pairs ({n_rejected} rows rejected)", source=str(path))
    return pairs


__all__ = ["CHOSEN_RULES", "OUTCOME_AGGREGATES", "STAT_KEYS", "STRATEGIES", "ErrorPairOptions", "OutcomePair", "PairBuildResult", "as_solutions",
           "build_outcome_pairs", "build_step_pairs", "build_step_pairs_to_file", "load_pairs", "pair_from_row",
           "right_samples",
           "pair_to_step_dpo", "save_pairs", "select_pair"]
