"""Evaluation metrics against values computed by hand on small crafted cases."""

import math
import random

import pytest

from reward_models.evaluation import (
    auroc,
    average_ranks,
    best_of_n_accuracy,
    calibration_bins,
    evaluate_prm,
    expected_calibration_error,
    first_error_f1,
    majority_vote_accuracy,
    predict_first_error,
    reliability_diagram,
    score_candidates,
    step_metrics,
    weighted_majority_vote_accuracy,
)
from reward_models.rules import FunctionRewardModel
from reward_models.types import DataError, StepSample


def test_auroc_with_ties():
    # good steps score 0.8 and 0.5; bad ones 0.5, 0.3, 0.5.
    # pairs (good, bad): 0.8 beats all 3 -> 3; 0.5 ties two 0.5s -> 2 * 0.5, beats 0.3 -> 1. U = 5 of 6
    # ranks: 0.3 -> 1, the three 0.5s -> (2+3+4)/3 = 3, 0.8 -> 5; good rank sum 8; U = 8 - 2*3/2 = 5
    scores, labels = [0.8, 0.5, 0.5, 0.3, 0.5], [1, 1, 0, 0, 0]
    assert average_ranks(scores) == [5.0, 3.0, 3.0, 1.0, 3.0]
    assert auroc(scores, labels) == pytest.approx(5 / 6)
    assert auroc([0.1, 0.9], [1, 0]) == 0.0 and auroc([0.5, 0.5], [1, 0]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))  # one class only


def test_step_metrics_by_hand():
    scores = [0.9, 0.7, 0.4, 0.2, 0.6, 0.1]
    labels = [1, 1, 1, 0, 0, 0.0]
    # threshold 0.65: predicted good {0, 1}; truly good {0, 1, 2}; truly bad {3, 4, 5}
    # correct: 0, 1 (good), 3, 4, 5 (bad) -> 5/6
    # bad class: predicted bad {2,3,4,5}, tp 3 -> P 3/4, R 3/3, F1 2*.75/1.75 = 6/7
    # good class: predicted good {0,1}, tp 2 -> P 1, R 2/3, F1 = 2*(2/3)/(5/3) = 4/5
    # AUROC: good .9/.7 beat all 3 bad (6), .4 beats .2/.1 not .6 (2) -> 8/9
    m = step_metrics(scores, labels, threshold=0.65)
    assert (m.n, m.n_bad) == (6, 3)
    assert m.accuracy == pytest.approx(5 / 6)
    assert (m.precision_bad, m.recall_bad, m.f1_bad) == pytest.approx((3 / 4, 1.0, 6 / 7))
    assert (m.precision_good, m.recall_good, m.f1_good) == pytest.approx((1.0, 2 / 3, 4 / 5))
    assert m.auroc == pytest.approx(8 / 9)
    # at 0.5, step 4 (0.6, bad) is predicted good: bad P = 2/3 (pred bad {2,3,5}), R = 2/3
    m5 = step_metrics(scores, labels)
    assert m5.accuracy == pytest.approx(4 / 6) and m5.f1_bad == pytest.approx(2 / 3)
    # soft labels: 0.5 counts as good
    assert step_metrics([0.9, 0.1], [0.5, 0.49]).accuracy == 1.0
    # nothing predicted bad -> bad precision undefined (NaN), recall 0
    m_all = step_metrics([0.9, 0.8], [1, 0])
    assert math.isnan(m_all.precision_bad) and m_all.recall_bad == 0.0 and math.isnan(m_all.f1_bad)
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        step_metrics([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError, match=r"label 0 is 2.0"):
        step_metrics([0.1], [2])


def test_first_error_f1_and_prediction():
    assert predict_first_error([0.9, 0.6, 0.4, 0.8]) == 2
    assert predict_first_error([0.9, 0.6, 0.4, 0.8], threshold=0.65) == 1
    assert predict_first_error([0.9, 0.5]) is None  # 0.5 passes a 0.5 threshold
    # erroneous solutions (true 2, 1, 3): predicted 2 (hit), None (miss), 0 (miss) -> 1/3
    # correct solutions: predicted 1 (miss), None (hit) -> 1/2;  F1 = 2*(1/3)*(1/2)/(1/3+1/2) = 0.4
    r = first_error_f1([2, None, 1, None, 0], [2, 1, None, None, 3])
    assert (r.n_erroneous, r.n_correct) == (3, 2)
    assert (r.acc_erroneous, r.acc_correct, r.f1) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert first_error_f1([None, 0], [1, None]).f1 == 0.0  # both accuracies 0
    assert math.isnan(first_error_f1([None], [None]).f1)  # no erroneous solutions: undefined
    with pytest.raises(ValueError):
        first_error_f1([None], [None, 1])


def test_ece_two_bins_and_reliability_png(tmp_path):
    probs = [0.1, 0.3, 0.45, 0.6, 0.9, 1.0]
    labels = [0, 0, 1, 1, 1, 0]
    # bin [0, .5): probs .1 .3 .45 -> mean .28333, labels mean 1/3 -> |diff| = .05, weight 3/6 -> .025
    # bin [.5, 1]: probs .6 .9 1.0 -> mean .83333, labels mean 2/3 -> 1/6, weight 1/2 -> .083333
    assert [b.count for b in calibration_bins(probs, labels, 2)] == [3, 3]  # 1.0 falls in the last bin
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.025 + 1 / 12)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0  # perfectly calibrated
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error([1.5], [1])
    out = reliability_diagram(probs, labels, tmp_path / "plots" / "rel.png", n_bins=2)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


class CountingRM(FunctionRewardModel):
    """Records how many completions each batched score_steps call receives."""

    def __init__(self, fn):
        super().__init__(fn)
        self.calls = []

    def score_steps(self, prompts, steps):
        self.calls.append(len(prompts))
        return super().score_steps(prompts, steps)


def conf(prompt, steps):
    return [float(s.split("conf:")[1]) for s in steps]


PROMPTS = ["2+2", "3+3", "1+1"]
GOLD = ["4", "6", "2"]
CANDS = [
    ["answer 4 conf:0.9", "answer 5 conf:0.3", "answer 5 conf:0.35"],
    ["answer 7 conf:0.8", "answer 6 conf:0.5", "answer 6 conf:0.4"],
    ["answer 2 conf:0.6", "answer 3 conf:0.6", "answer 3 conf:0.1"],
]


def answer(c):
    return c.split()[1]


def test_best_of_n_and_votes():
    # best-of-N: 4 (.9, right), 7 (.8, wrong), tie .6/.6 -> first = 2 (right) -> 2/3
    # majority: 5 (wrong), 6 (right), 3 (wrong) -> 1/3
    # weighted: 4:.9 vs 5:.65 (right); 6:.9 vs 7:.8 (right); 2:.6 vs 3:.7 (wrong) -> 2/3
    rm = CountingRM(conf)
    right = dict(zip(PROMPTS, GOLD))
    assert best_of_n_accuracy(rm, PROMPTS, CANDS, lambda p, c: answer(c) == right[p]) == pytest.approx(2 / 3)
    assert rm.calls == [9]  # one batched call for all nine candidates
    table = [[answer(c) == g for c in cs] for cs, g in zip(CANDS, GOLD)]
    assert best_of_n_accuracy(rm, PROMPTS, CANDS, table, batch_size=4) == pytest.approx(2 / 3)
    assert rm.calls[1:] == [4, 4, 1]
    assert majority_vote_accuracy(CANDS, answer, GOLD) == pytest.approx(1 / 3)
    assert weighted_majority_vote_accuracy(rm, PROMPTS, CANDS, answer, GOLD) == pytest.approx(2 / 3)
    # gold as a function (i, answer) -> bool, e.g. for numeric equivalence
    assert weighted_majority_vote_accuracy(rm, PROMPTS, CANDS, answer,
                                           lambda i, a: float(a) == float(GOLD[i])) == pytest.approx(2 / 3)
    # any callable f(prompt, steps) works as the reward model
    assert score_candidates(conf, PROMPTS[:1], CANDS[:1]) == [[0.9, 0.3, 0.35]]
    # candidates without an answer abstain; a prompt with no answer at all is wrong
    assert majority_vote_accuracy([["x", "y 2"], ["z"]], lambda c: c.split()[1] if " " in c else None,
                                  ["2", "1"]) == 0.5
    with pytest.raises(ValueError, match="one bool per candidate"):
        best_of_n_accuracy(rm, PROMPTS, CANDS, [[True]] * 3)
    with pytest.raises(ValueError, match="non-empty list"):
        best_of_n_accuracy(rm, ["p"], [[]], [[]])


def test_evaluate_prm_by_hand():
    table = {"a": 0.9, "b": 0.7, "c": 0.2, "d": 0.8, "e": 0.4, "f": 0.3, "g": 0.1, "h": 0.95}
    rm = CountingRM(lambda p, steps: [table[s] for s in steps])
    samples = [StepSample("p0", ["a", "b", "c"], [1, 1, 0]),  # predicted first error 2 = true 2
               StepSample("p1", ["d", "e"], [1, 1]),  # predicted 1, truly correct: miss
               StepSample("p2", ["f", "g"], [1, 0]),  # predicted 0, true 1: miss
               StepSample("p3", ["h"], [1])]  # predicted None = true None
    ev = evaluate_prm(rm, samples, threshold=0.5, batch_size=3, n_bins=2, progress=False)
    assert rm.calls == [3, 1] and (ev.n_samples, ev.n_steps) == (4, 8)
    assert ev.step_scores == [[0.9, 0.7, 0.2], [0.8, 0.4], [0.3, 0.1], [0.95]]
    # first error: erroneous 1/2, correct 1/2 -> F1 0.5
    assert (ev.first_error.acc_erroneous, ev.first_error.acc_correct, ev.first_error.f1) == (0.5, 0.5, 0.5)
    # flat: predicted good [T,T,F,T,F,F,F,T] vs good [T,T,F,T,T,T,F,T] -> 6/8; bad: P 2/4, R 2/2 -> F1 2/3
    assert ev.steps.accuracy == 0.75 and ev.steps.f1_bad == pytest.approx(2 / 3)
    assert ev.steps.auroc == 1.0  # both bad steps (.2, .1) score below every good one
    # ECE, 2 bins: [.2 .4 .3 .1] mean .25 vs labels .5 -> .25 * 4/8; [.9 .7 .8 .95] mean .8375 vs 1 -> .1625 * 4/8
    assert ev.ece == pytest.approx(0.125 + 0.08125)
    d = ev.to_dict()
    assert d["steps"]["accuracy"] == 0.75 and "step_scores" not in d
    raw = evaluate_prm(lambda p, steps: [3.0 * table[s] for s in steps], samples, progress=False)
    assert math.isnan(raw.ece) and raw.steps.auroc == 1.0  # logits: AUROC fine, ECE undefined
    assert raw.to_dict()["ece"] is None and len(raw.to_dict(with_scores=True)["step_scores"]) == 4
    with pytest.raises(DataError, match="row 1, field 'labels'"):
        evaluate_prm(rm, [samples[0], StepSample("p", ["a"])], progress=False)


def test_arith_checker_is_a_perfect_prm_and_reranker():
    from stepdpo.tasks.arith import (
        STEP_FORMAT,
        ArithConfig,
        checker_reward_model,
        inject_error,
        is_correct,
        make_samples,
        parse_expression,
    )

    samples = make_samples(30, seed=3, error_rate=0.5)
    n_err = sum(s.first_error is not None for s in samples)
    assert 0 < n_err < 30
    ev = evaluate_prm(checker_reward_model(), samples, progress=False)
    assert ev.steps.accuracy == 1.0 and ev.steps.auroc == 1.0 and ev.first_error.f1 == 1.0 and ev.ece == 0.0
    # a constant "everything is fine" model: never finds an error -> erroneous accuracy 0, F1 0
    flat = evaluate_prm(lambda p, steps: [0.9] * len(steps), samples, progress=False)
    assert flat.first_error.acc_erroneous == 0.0 and flat.first_error.acc_correct == 1.0 and flat.first_error.f1 == 0.0
    assert flat.steps.auroc == 0.5  # all scores tied
    # best-of-N over a corrupted (first) and a correct (second) solution of the same problem
    rng = random.Random(0)
    good = make_samples(10, seed=4)
    prompts = [g.prompt for g in good]
    cands = [[STEP_FORMAT.join(inject_error(parse_expression(g.meta["expression"]), rng)[0]),
              STEP_FORMAT.join(g.steps)] for g in good]
    cfg = ArithConfig()

    def correct(prompt, completion):
        return is_correct(cfg.expression_of(prompt), STEP_FORMAT.split(completion))

    assert sum(correct(p, c[0]) for p, c in zip(prompts, cands)) == 0
    assert sum(correct(p, c[1]) for p, c in zip(prompts, cands)) == 10
    assert best_of_n_accuracy(checker_reward_model(), prompts, cands, correct) == 1.0
    # a reward model that cannot tell them apart picks the first (corrupted) one
    assert best_of_n_accuracy(lambda p, steps: [0.5] * len(steps), prompts, cands, correct) == 0.0


def test_rerank_report_numbers_unfinished_and_length():
    from reward_models.evaluation import processbench_f1, rerank_report

    # problem 0: a long right solution with one doubtful step vs a short wrong one; problem 1: an unfinished
    # candidate with the best scores must not be picked over finished ones
    scores = [[[0.9, 0.9, 0.9, 0.6], [0.7]], [[0.99], [0.8, 0.8], [0.3]]]
    correct = [[True, False], [False, True, False]]
    answers = [["7", "5"], [None, "3", "4"]]
    r = rerank_report(scores, correct, answers, ["7", "3"])
    assert r["n"] == 3 and r["problems"] == 2 and r["pass_at_n"] == 1.0
    assert r["best_of_n"]["min"] == 0.5  # problem 0: min 0.6 < 0.7 -> the short wrong one; problem 1: right
    assert r["best_of_n"]["prod"] == 0.5  # 0.437 < 0.7: the product favours the short solution
    assert r["best_of_n"]["mean"] == 1.0 and r["best_of_n"]["last"] == 0.5
    assert r["majority_vote"] == 1.0  # ties go to the answer seen first ("7"; "3" in problem 1, None abstains)
    assert r["weighted_vote"]["min"] == 0.5  # 0.7 for "5" beats 0.6 for "7"; 0.8 for "3" beats 0.3
    assert processbench_f1([1, None], [1, None]).f1 == 1.0
    with pytest.raises(ValueError, match="one entry per candidate"):
        rerank_report([[[0.5]]], [[True, False]], [["1"]], ["1"])
