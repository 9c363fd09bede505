"""Step-level evaluation of reward models: small pure metric functions plus batched drivers.

Conventions: a step **label** is a float in ``[0, 1]`` and counts as *good* when ``>= 0.5``;
a step **score** is the reward model's output (higher = better) and is *predicted good* when
``>= threshold``. AUROC measures how well scores rank good steps above bad ones.

* :func:`step_metrics` - accuracy, precision/recall/F1 for the **bad-step** class (error
  detection, the class ProcessBench cares about) and for the good-step class, and AUROC.
* :func:`first_error_f1` (also named :func:`processbench_f1`) - the ProcessBench F1 (arXiv
  2412.06559): accuracy on erroneous solutions (predicted first error index == true index),
  accuracy on correct ones (predicted None), harmonic mean. ``PRMEvaluation.processbench_f1``.
* :func:`expected_calibration_error`, :func:`reliability_diagram` - calibration of scores
  read as probabilities.
* :func:`best_of_n_accuracy`, :func:`weighted_majority_vote_accuracy`,
  :func:`majority_vote_accuracy` - reranking with any reward model (batched ``score`` calls);
  :func:`rerank_report` - best-of-N and weighted vote under each step-score aggregation from
  scores computed once, with unfinished candidates never picked over finished ones.
* :func:`evaluate_prm` - all step metrics of a reward model on labeled :class:`StepSample` s.

>>> round(auroc([0.9, 0.2, 0.6, 0.4], [1, 0, 1, 0]), 3)
1.0
>>> predict_first_error([0.9, 0.3, 0.8], threshold=0.5)
1

Why one ~530-line module: the metric functions and the drivers that batch a reward model over
samples are read together (each driver's numbers are the functions above it).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reward_models.base import aggregate, as_reward_model
from reward_models.types import DataError, StepSample

logger = logging.getLogger(__name__)
NAN = float("nan")


def _check_pair(scores: Sequence[float], labels: Sequence[float]) -> tuple[list[float], list[bool]]:
    scores, labels = [float(s) for s in scores], [float(v) for v in labels]
    if len(scores) != len(labels):
        raise ValueError(f"got {len(scores)} scores for {len(labels)} labels")
    if not scores:
        raise ValueError("no scores to evaluate")
    for i, v in enumerate(labels):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"label {i} is {v}; labels must lie in [0, 1]")
    for i, s in enumerate(scores):
        if math.isnan(s) or math.isinf(s):
            raise ValueError(f"score {i} is {s}; scores must be finite")
    return scores, [v >= 0.5 for v in labels]


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats (undefined metrics) by None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _div(a: float, b: float) -> float:
    return a / b if b else NAN


def _f1(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return NAN
    return 2 * p * r / (p + r) if p + r else 0.0


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks with ties given their average rank.

    >>> average_ranks([0.5, 0.1, 0.5, 0.9])
    [2.5, 1.0, 2.5, 4.0]
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve for ranking good steps (label >= 0.5) above bad ones.

    Rank-based (Mann-Whitney U): ties count one half. NaN when only one class is present.
    """
    scores, good = _check_pair(scores, labels)
    n_pos = sum(good)
    n_neg = len(good) - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    ranks = average_ranks(scores)
    rank_sum = sum(r for r, g in zip(ranks, good) if g)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class StepMetrics:
    """Binary step classification metrics. ``*_bad``: the bad-step class is positive."""

    n: int
    n_bad: int
    accuracy: float
    precision_bad: float
    recall_bad: float
    f1_bad: float
    precision_good: float
    recall_good: float
    f1_good: float
    auroc: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON; NaN (undefined) values become None."""
        return _json_safe(asdict(self))


def step_metrics(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.5) -> StepMetrics:
    """Accuracy, per-class precision/recall/F1 and AUROC of flat per-step scores.

    A step is predicted good when ``score >= threshold`` and is good when ``label >= 0.5``.
    Undefined ratios (no predicted or no true members of a class) are NaN.

    >>> m = step_metrics([0.9, 0.2, 0.6, 0.4], [1, 0, 0, 1])
    >>> m.accuracy, m.precision_bad, m.recall_bad
    (0.5, 0.5, 0.5)
    """
    scores, good = _check_pair(scores, labels)
    pred = [s >= threshold for s in scores]
    tp_bad = sum(not p and not g for p, g in zip(pred, good))
    tp_good = sum(p and g for p, g in zip(pred, good))
    n_bad, n_pred_bad = good.count(False), pred.count(False)
    n_good, n_pred_good = len(good) - n_bad, len(pred) - n_pred_bad
    pb, rb = _div(tp_bad, n_pred_bad), _div(tp_bad, n_bad)
    pg, rg = _div(tp_good, n_pred_good), _div(tp_good, n_good)
    return StepMetrics(n=len(good), n_bad=n_bad, accuracy=(tp_bad + tp_good) / len(good),
                       precision_bad=pb, recall_bad=rb, f1_bad=_f1(pb, rb),
                       precision_good=pg, recall_good=rg, f1_good=_f1(pg, rg), auroc=auroc(scores, labels))


def predict_first_error(step_scores: Sequence[float], threshold: float = 0.5) -> int | None:
    """Index of the first step scored below ``threshold``; None when every step passes."""
    return next((i for i, s in enumerate(step_scores) if s < threshold), None)


@dataclass
class FirstErrorResult:
    """ProcessBench-style result: ``f1`` is the harmonic mean of the two accuracies."""

    acc_erroneous: float
    acc_correct: float
    f1: float
    n_erroneous: int
    n_correct: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON; NaN (undefined) values become None."""
        return _json_safe(asdict(self))


def first_error_f1(pred_first_errors: Sequence[int | None], true_first_errors: Sequence[int | None]
                   ) -> FirstErrorResult:
    """ProcessBench first-error F1.

    ``acc_erroneous``: share of solutions with an error whose predicted first-error index is
    exactly right; ``acc_correct``: share of error-free solutions predicted error-free (None).
    A group with no members gives NaN (and so does the F1).

    >>> first_error_f1([1, None, 2, None], [1, 0, None, None]).f1
    0.5
    """
    pred, true = list(pred_first_errors), list(true_first_errors)
    if len(pred) != len(true):
        raise ValueError(f"got {len(pred)} predictions for {len(true)} solutions")
    err = [p == t for p, t in zip(pred, true) if t is not None]
    ok = [p is None for p, t in zip(pred, true) if t is None]
    a, b = _div(sum(err), len(err)), _div(sum(ok), len(ok))
    return FirstErrorResult(acc_erroneous=a, acc_correct=b, f1=_f1(a, b), n_erroneous=len(err), n_correct=len(ok))


def processbench_f1(pred_first_errors: Sequence[int | None], true_first_errors: Sequence[int | None]
                    ) -> FirstErrorResult:
    """The ProcessBench F1 (arXiv 2412.06559): :func:`first_error_f1` under the benchmark's name."""
    return first_error_f1(pred_first_errors, true_first_errors)


def tune_first_error_threshold(step_scores: Sequence[Sequence[float]], true_first_errors: Sequence[int | None],
                               candidates: Sequence[float] | None = None) -> tuple[float, FirstErrorResult]:
    """The threshold that maximizes first-error F1 on a validation set, and its result.

    Candidates default to the midpoints between the distinct observed scores (plus both ends);
    ties in F1 go to the threshold closest to 0.5. Tune on validation data, never on test data.

    >>> tune_first_error_threshold([[0.9, 0.2], [0.8, 0.7]], [1, None])[0]
    0.45
    """
    if len(step_scores) != len(true_first_errors):
        raise ValueError(f"got {len(step_scores)} score lists for {len(true_first_errors)} solutions")
    if candidates is None:
        values = sorted({float(v) for row in step_scores for v in row})
        if not values:
            raise ValueError("no step scores to tune a threshold on")
        candidates = [values[0] - 1e-6] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-6]
    best: tuple[float, float, FirstErrorResult] | None = None
    for t in candidates:
        res = first_error_f1([predict_first_error(row, t) for row in step_scores], true_first_errors)
        f1 = -1.0 if math.isnan(res.f1) else res.f1
        key = (f1, -abs(t - 0.5))
        if best is None or key > (best[0], -abs(best[1] - 0.5)):
            best = (f1, float(t), res)
    assert best is not None
    return round(best[1], 6), best[2]


# -- calibration ---------------------------------------------------------------------------------
@dataclass
class CalibrationBin:
    lo: float
    hi: float
    count: int
    mean_prob: float
    mean_label: float


def calibration_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[CalibrationBin]:
    """Equal-width bins ``[k/n, (k+1)/n)`` (the last includes 1.0) with mean prob and label."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    probs = [float(p) for p in probs]
    labels = [float(v) for v in labels]
    _check_pair(probs, labels)
    for i, p in enumerate(probs):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability {i} is {p}; calibration needs scores in [0, 1]")
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for i, p in enumerate(probs):
        members[min(int(p * n_bins), n_bins - 1)].append(i)
    return [CalibrationBin(lo=k / n_bins, hi=(k + 1) / n_bins, count=len(m),
                           mean_prob=_div(sum(probs[i] for i in m), len(m)),
                           mean_label=_div(sum(labels[i] for i in m), len(m))) for k, m in enumerate(members)]


def expected_calibration_error(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> float:
    """ECE = sum over bins of ``count/N * |mean label - mean prob|`` (soft labels allowed).

    >>> round(expected_calibration_error([0.2, 0.4, 0.8, 0.9], [0, 1, 1, 1], n_bins=2), 3)
    0.175
    """
    bins = calibration_bins(probs, labels, n_bins)
    total = sum(b.count for b in bins)
    return sum(b.count / total * abs(b.mean_label - b.mean_prob) for b in bins if b.count)


def reliability_diagram(probs: Sequence[float], labels: Sequence[float], path: str | os.PathLike,
                        n_bins: int = 10, title: str | None = None) -> Path:
    """Write a reliability diagram (mean label per probability bin vs the diagonal) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 1.0 / n_bins
    used = [b for b in bins if b.count]
    ax.bar([b.lo for b in used], [b.mean_label for b in used], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="observed share good")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for b in used:
        ax.text(b.lo + width / 2, min(b.mean_label + 0.02, 0.95), str(b.count), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (step score)")
    ax.set_ylabel("fraction of good steps")
    ax.set_title(title or f"Reliability (ECE = {ece:.3f}, n = {sum(b.count for b in bins)})")
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# -- reranking with a reward model ----------------------------------------------------------------
def _check_candidates(prompts: Sequence[str], candidates: Sequence[Sequence[str]]) -> None:
    if len(prompts) != len(candidates):
        raise ValueError(f"got {len(prompts)} prompts for {len(candidates)} candidate lists")
    for i, c in enumerate(candidates):
        if isinstance(c, str) or len(c) == 0:
            raise ValueError(f"candidates[{i}] must be a non-empty list of completions")


def score_candidates(reward_model: Any, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                     batch_size: int = 64, progress: bool = False) -> list[list[float]]:
    """Scores of every candidate (``score`` called once per batch of ``batch_size`` completions)."""
    rm = as_reward_model(reward_model)
    _check_candidates(prompts, candidates)
    flat = [(p, c) for p, cs in zip(prompts, candidates) for c in cs]
    scores: list[float] = []
    for start in tqdm(range(0, len(flat), batch_size), desc="scoring", disable=not progress):
        chunk = flat[start:start + batch_size]
        out = list(rm.score([p for p, _ in chunk], [c for _, c in chunk]))
        if len(out) != len(chunk):
            raise ValueError(f"reward model returned {len(out)} scores for {len(chunk)} completions")
        scores.extend(float(s) for s in out)
    result, k = [], 0
    for cs in candidates:
        result.append(scores[k:k + len(cs)])
        k += len(cs)
    return result


def _correct_table(is_correct, prompts, candidates) -> list[list[bool]]:
    if callable(is_correct):
        return [[bool(is_correct(p, c)) for c in cs] for p, cs in zip(prompts, candidates)]
    table = [list(map(bool, row)) for row in is_correct]
    if [len(r) for r in table] != [len(c) for c in candidates]:
        raise ValueError("is_correct must have one bool per candidate (same shape as candidates)")
    return table


def best_of_n_accuracy(reward_model: Any, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                       is_correct: Callable[[str, str], bool] | Sequence[Sequence[bool]],
                       batch_size: int = 64) -> float:
    """Share of prompts whose highest-scored candidate is correct (ties: the first one).

    ``is_correct`` is ``f(prompt, candidate) -> bool`` or a table of bools shaped like
    ``candidates``. ``reward_model`` is anything :func:`as_reward_model` accepts.
    """
    scores = score_candidates(reward_model, prompts, candidates, batch_size)
    table = _correct_table(is_correct, prompts, candidates)
    picks = [max(range(len(s)), key=lambda i, s=s: (s[i], -i)) for s in scores]
    return sum(table[k][i] for k, i in enumerate(picks)) / len(picks)


def vote(answers: Sequence[Any], weights: Sequence[float]) -> Any:
    """The answer with the largest total weight (ties: the answer seen first); None answers abstain."""
    totals: dict[Any, float] = {}
    for a, w in zip(answers, weights):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + w
    if not totals:
        return None
    best = max(totals.values())
    return next(a for a in totals if totals[a] == best)


def _norm(a: Any) -> Any:
    return None if a is None else str(a).strip()


def _vote_accuracy(candidates, answer_fn, gold, weights) -> float:
    if len(candidates) == 0:
        raise ValueError("no candidates to vote on")
    if not callable(gold) and len(gold) != len(candidates):
        raise ValueError(f"got {len(candidates)} candidate lists for {len(gold)} gold answers")
    hits = 0
    for i, (cs, w) in enumerate(zip(candidates, weights)):
        winner = vote([_norm(answer_fn(c)) for c in cs], w)
        if winner is not None:
            hits += bool(gold(i, winner)) if callable(gold) else winner == _norm(gold[i])
    return hits / len(candidates)


def majority_vote_accuracy(candidates: Sequence[Sequence[str]], answer_fn: Callable[[str], Any],
                           gold: Sequence[Any] | Callable[[int, Any], bool]) -> float:
    """Unweighted self-consistency baseline: the most frequent answer per prompt vs the gold one.

    ``gold`` is a list of gold answers (compared with the voted answer as stripped strings) or
    a function ``correct(i, answer) -> bool`` (``i``: the prompt's index) for answers that need
    an equivalence check. A candidate whose ``answer_fn`` gives None abstains; a prompt with
    no answer at all counts as wrong; ties go to the answer seen first.

    >>> majority_vote_accuracy([["x=1", "x=2", "x=2"]], lambda c: c.split("=")[1], ["2"])
    1.0
    """
    return _vote_accuracy(candidates, answer_fn, gold, [[1.0] * len(cs) for cs in candidates])


def weighted_majority_vote_accuracy(reward_model: Any, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                                    answer_fn: Callable[[str], Any], gold: Sequence[Any] | Callable[[int, Any], bool],
                                    batch_size: int = 64) -> float:
    """Reward-weighted vote: each candidate adds its score to its answer's total.

    Same rules as :func:`majority_vote_accuracy`. Scores are used as returned, so use a reward
    model whose scores are non-negative (probabilities). ``score`` is called once per batch.
    """
    scores = score_candidates(reward_model, prompts, candidates, batch_size)
    return _vote_accuracy(candidates, answer_fn, gold, scores)


# -- a PRM on labeled samples ---------------------------------------------------------------------
@dataclass
class PRMEvaluation:
    """All step-level metrics of a reward model on labeled samples (see :func:`evaluate_prm`).

    ``ece`` is NaN when some score lies outside [0, 1] (the scores are not probabilities).
    ``step_scores`` holds the model's scores per sample, in input order.
    """

    n_samples: int
    n_steps: int
    threshold: float
    steps: StepMetrics
    first_error: FirstErrorResult
    ece: float
    step_scores: list[list[float]] = field(default_factory=list, repr=False)

    @property
    def processbench_f1(self) -> float:
        """ProcessBench's F1: ``first_error.f1`` (first error located exactly, correct solutions kept)."""
        return self.first_error.f1

    def to_dict(self, with_scores: bool = False) -> dict[str, Any]:
        """Plain dict for JSON (NaN -> None); ``with_scores`` adds the per-sample step scores."""
        d = asdict(self)
        d["processbench_f1"] = self.first_error.f1
        if not with_scores:
            d.pop("step_scores")
        return _json_safe(d)


RERANK_AGGREGATIONS = ("min", "prod", "mean", "last")


def rerank_report(step_scores: Sequence[Sequence[Sequence[float]]], correct: Sequence[Sequence[bool]],
                  answers: Sequence[Sequence[Any]], gold: Sequence[Any],
                  aggregations: Sequence[str] = RERANK_AGGREGATIONS) -> dict[str, Any]:
    """Best-of-N and reward-weighted voting from step scores computed once, per aggregation.

    Args:
        step_scores: per problem, per candidate, its step scores (probabilities; an empty list
            for an empty candidate).
        correct: per problem, per candidate, whether it is right (by a checker).
        answers: per problem, per candidate, its final answer, or None when it has none
            (unfinished): such a candidate abstains from votes and is picked by best-of-N only
            when no candidate of the problem is finished.
        gold: per problem, the right answer (compared as stripped strings).
        aggregations: how step scores reduce to a candidate's score (:func:`reward_models.base.aggregate`):
            ``min`` is blind to length; ``prod`` favours short solutions, ``last`` reads only the
            final step, ``mean`` dilutes one bad step in a long solution.

    Returns ``{"n", "problems", "pass_at_n", "majority_vote", "best_of_n": {agg: acc},
    "weighted_vote": {agg: acc}}`` (accuracies in [0, 1]; ties go to the earlier candidate).

    >>> r = rerank_report([[[0.9, 0.2], [0.8, 0.7], [0.6]]], [[False, True, False]], [["5", "7", "5"]], ["7"])
    >>> r["majority_vote"], r["best_of_n"]["min"], r["weighted_vote"]["min"]
    (0.0, 1.0, 0.0)
    """
    n_p = len(step_scores)
    if not (len(correct) == len(answers) == len(gold) == n_p) or n_p == 0:
        raise ValueError("step_scores, correct, answers and gold need one entry per problem (and at least one)")
    for i in range(n_p):
        if not (len(step_scores[i]) == len(correct[i]) == len(answers[i])) or not step_scores[i]:
            raise ValueError(f"problem {i}: step_scores, correct and answers need one entry per candidate")
    gold_n = [_norm(g) for g in gold]
    out: dict[str, Any] = {"n": max(len(c) for c in correct), "problems": n_p,
                           "pass_at_n": sum(any(c) for c in correct) / n_p,
                           "majority_vote": sum(vote([_norm(a) for a in ans], [1.0] * len(ans)) == g
                                                for ans, g in zip(answers, gold_n)) / n_p,
                           "best_of_n": {}, "weighted_vote": {}}
    for how in aggregations:
        best = weighted = 0
        for sc, ok, ans, g in zip(step_scores, correct, answers, gold_n):
            agg = [aggregate(s, how) if s else 0.0 for s in sc]
            finished = [a is not None for a in ans]
            pick = max(range(len(agg)), key=lambda k: (finished[k], agg[k], -k))
            best += bool(ok[pick])
            weighted += vote([_norm(a) for a in ans], agg) == g
        out["best_of_n"][how] = best / n_p
        out["weighted_vote"][how] = weighted / n_p
    return out


def evaluate_prm(reward_model: Any, samples: Sequence[StepSample], threshold: float = 0.5,
                 batch_size: int = 16, n_bins: int = 10, progress: bool = True) -> PRMEvaluation:
    """Score every sample's steps (``score_steps`` once per batch) and compute all metrics."""
    rm = as_reward_model(reward_model)
    if not samples:
        raise ValueError("no samples to evaluate")
    for i, s in enumerate(samples):
        if not isinstance(s, StepSample):
            raise TypeError(f"sample {i} is a {type(s).__name__}, not a StepSample")
        if s.labels is None:
            raise DataError("needs step labels for evaluation", row=i, field="labels")
    scores: list[list[float]] = []
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluating", disable=not progress):
        chunk = samples[start:start + batch_size]
        out = rm.score_steps([s.prompt for s in chunk], [list(s.steps) for s in chunk])
        scores.extend([float(v) for v in row] for row in out)
    flat_s = [v for row in scores for v in row]
    flat_l = [v for s in samples for v in s.labels]  # type: ignore[union-attr]
    if len(flat_s) != len(flat_l):
        raise ValueError(f"reward model returned {len(flat_s)} step scores for {len(flat_l)} steps")
    fe = first_error_f1([predict_first_error(row, threshold) for row in scores], [s.first_error for s in samples])
    probs_ok = all(0.0 <= v <= 1.0 for v in flat_s)
    if not probs_ok:
        logger.info("scores outside [0, 1]: ECE not computed")
    return PRMEvaluation(n_samples=len(samples), n_steps=len(flat_s), threshold=threshold,
                         steps=step_metrics(flat_s, flat_l, threshold), first_error=fe,
                         ece=expected_calibration_error(flat_s, flat_l, n_bins) if probs_ok else NAN,
                         step_scores=scores)


__all__ = ["CalibrationBin", "FirstErrorResult", "PRMEvaluation", "StepMetrics", "auroc", "average_ranks",
           "best_of_n_accuracy", "calibration_bins", "evaluate_prm", "expected_calibration_error",
           "first_error_f1", "majority_vote_accuracy", "processbench_f1", "RERANK_AGGREGATIONS", "rerank_report", "tune_first_error_threshold", "predict_first_error", "reliability_diagram",
           "score_candidates", "step_metrics", "vote", "weighted_majority_vote_accuracy"]
