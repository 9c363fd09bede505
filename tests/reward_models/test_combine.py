import json
import math

import numpy as np
import pytest

from reward_models.base import load_reward_model
from reward_models.combine import CombinedRewardModel, EnsembleRewardModel, ShapedRewardModel, shaped_reward
from reward_models.outcome import OutcomeRewardModel
from reward_models.process import ProcessRewardModel
from reward_models.rules import FunctionRewardModel
from reward_models.testing import tiny_causal_lm, tiny_token_classifier
from reward_models.types import DataError

PROMPTS = ["Q: 2+3*4\n", "Q: 7-5\n"]
STEPS = [["3*4=12", "2+12=14", "Answer: 14"], ["7-5=2", "Answer: 2"]]


class LengthJudge:
    """A user class with only get_rewards_for_steps (no base class)."""

    def get_rewards_for_steps(self, steps):
        return [len(s) / 10 for s in steps]


def step_table(table):
    """A rule-based PRM returning fixed scores per step text."""
    return FunctionRewardModel(lambda p, steps: [table[s] for s in steps])


PROC = step_table({"a": 0.9, "b": 0.5, "c": 0.8})
OUTC = FunctionRewardModel(lambda p, steps: [0.2 * (j + 1) for j in range(len(steps))], aggregation="last")


@pytest.mark.parametrize("how, agg", [("mean", (0.9 + 0.5 + 0.8) / 3), ("min", 0.5), ("prod", 0.9 * 0.5 * 0.8),
                                      ("last", 0.8)])
def test_combined_weights_and_aggregations(how, agg):
    rm = CombinedRewardModel(PROC, OUTC, process_weight=0.7, outcome_weight=0.3, step_aggregation=how)
    # outcome score of "a\nb\nc\n" = last prefix score = 0.6
    assert rm.score(["p"], ["a\nb\nc\n"]) == pytest.approx([0.7 * agg + 0.3 * 0.6])
    assert rm.get_reward_for_text("a\nb\nc\n") == pytest.approx(0.7 * agg + 0.3 * 0.6)
    assert rm.score_steps(["p"], [["a", "b", "c"]]) == [pytest.approx([0.7 * 0.9 + 0.3 * 0.2, 0.7 * 0.5 + 0.3 * 0.4,
                                                                      0.7 * 0.8 + 0.3 * 0.6])]


def test_combined_seed_defaults_and_missing_parts():
    rm = CombinedRewardModel(process_model_name=PROC)
    assert (rm.process_weight, rm.outcome_weight, rm.step_aggregation) == (0.7, 0.3, "mean")
    assert rm.outcome_reward_model is None
    assert rm.get_reward_for_text("a\nb\n") == pytest.approx(0.7 * 0.7)  # missing outcome counts 0 (seed 004)
    steps, rewards, agg = rm.extract_and_aggregate_steps("a\nb\n")
    assert steps == ["a", "b"] and rewards == [0.9, 0.5] and agg == pytest.approx(0.7)
    rm.max_steps = 1
    assert rm.get_reward_for_text("a\nb\n") == pytest.approx(0.7 * 0.9)
    rm.step_delimiter = "|"
    assert rm.extract_steps("a|b") == ["a"] and rm.step_format.separator == "|"
    assert CombinedRewardModel().get_rewards_for_batch(["x", "y"]) == [0.0, 0.0]


def test_user_class_inside_combined_and_ensemble():
    rm = CombinedRewardModel(LengthJudge(), LengthJudge(), process_weight=0.5, outcome_weight=0.5)
    # process: [0.2, 0.4] -> mean 0.3; outcome via adapter: min over steps = 0.2
    assert rm.score(["p"], ["ab\nabcd\n"]) == pytest.approx([0.5 * 0.3 + 0.5 * 0.2])
    ens = EnsembleRewardModel([LengthJudge(), PROC])
    assert ens.score_steps(["p"], [["a", "b"]]) == [pytest.approx([(0.1 + 0.9) / 2, (0.1 + 0.5) / 2])]
    rm.process_reward_model = LengthJudge()  # seed-004 code assigns the attribute directly
    assert rm.get_rewards_for_steps(["abc"]) == pytest.approx([0.5 * 0.3 + 0.5 * 0.3])


def test_ensemble_std_min_and_weights():
    members = [step_table({"a": 0.9, "b": 0.1}), step_table({"a": 0.5, "b": 0.3}), step_table({"a": 0.1, "b": 0.8})]
    ens = EnsembleRewardModel(members)
    scores, stds = ens.score_steps_with_uncertainty(["p", "q"], [["a", "b"], []])
    table = np.array([[0.9, 0.1], [0.5, 0.3], [0.1, 0.8]])
    assert scores[0] == pytest.approx(table.mean(0).tolist()) and scores[1] == []
    assert stds[0] == pytest.approx(np.std(table, axis=0).tolist())
    assert EnsembleRewardModel(members, reduce="min").score_steps(["p"], [["a", "b"]])[0] == pytest.approx([0.1, 0.1])
    weighted = EnsembleRewardModel(members, weights=[2, 1, 1]).score_steps(["p"], [["a", "b"]])[0]
    assert weighted == pytest.approx(((table * np.array([[2], [1], [1]])).sum(0) / 4).tolist())
    whole, whole_std = ens.score_with_uncertainty(["p"], ["a\nb\n"])  # members aggregate with min
    assert whole == pytest.approx([np.mean([0.1, 0.3, 0.1])]) and whole_std == pytest.approx([np.std([0.1, 0.3, 0.1])])
    with pytest.raises(ValueError, match="2 weights for 3 members"):
        EnsembleRewardModel(members, weights=[1, 1])
    with pytest.raises(ValueError, match="unknown reduce"):
        EnsembleRewardModel(members, reduce="median")
    with pytest.raises(NotImplementedError, match="ensemble member 0"):
        EnsembleRewardModel([LengthJudge()]).save("/nonexistent/never_written")


def test_save_load_round_trip_with_real_models(tokenizer, tmp_path):
    prm = ProcessRewardModel.from_model(tiny_token_classifier(tokenizer, num_labels=3, seed=1), tokenizer,
                                        neutral="half")
    orm = OutcomeRewardModel.from_model(tiny_token_classifier(tokenizer, num_labels=1, seed=2), tokenizer)
    ver = ProcessRewardModel.from_model(tiny_causal_lm(tokenizer, seed=3), tokenizer, backend="verification",
                                        output="prob")
    combined = CombinedRewardModel(prm, orm, process_weight=0.6, outcome_weight=0.4, step_aggregation="min")
    combined.save(tmp_path / "combined")
    cfg = json.loads((tmp_path / "combined" / "reward_config.json").read_text())
    assert cfg["type"] == "combined" and cfg["process_weight"] == 0.6
    assert (tmp_path / "combined" / "process_reward_model" / "model.safetensors").exists()
    back = CombinedRewardModel.load(tmp_path / "combined")
    sols = ["3*4=12\n2+12=14\nAnswer: 14\n", "7-5=2\nAnswer: 2\n"]
    assert back.score(PROMPTS, sols) == combined.score(PROMPTS, sols)
    assert back.score_steps(PROMPTS, STEPS) == combined.score_steps(PROMPTS, STEPS)
    ens = EnsembleRewardModel([prm, ver, str(tmp_path / "combined")], weights=[1, 2, 1])
    ens.save(tmp_path / "ens")
    loaded = load_reward_model(tmp_path / "ens")
    assert isinstance(loaded, EnsembleRewardModel) and loaded.weights == [1.0, 2.0, 1.0]
    assert loaded.score_steps_with_uncertainty(PROMPTS, STEPS) == ens.score_steps_with_uncertainty(PROMPTS, STEPS)
    assert all(math.isfinite(v) for row in loaded.score_steps(PROMPTS, STEPS) for v in row)
    (tmp_path / "ens" / "reward_config.json").write_text(json.dumps({"type": "ensemble", "format_version": 1,
                                                                     "weights": [1], "reduce": "mean"}))
    with pytest.raises(DataError, match="field 'num_members'.*missing key"):
        load_reward_model(tmp_path / "ens")


def test_shaped_reward_model():
    base = step_table({"a": 2.0, "bb": -1.0, "ccc": 1.0})

    def by_length(r, prompt, steps, index):
        return shaped_reward(r, confidence=1.0, complexity=len(steps[index]) / 10)

    shaped = ShapedRewardModel(base, by_length, aggregation="sum")
    assert shaped.score_steps(["p"], [["a", "bb", "ccc"]]) == [pytest.approx([2.0 * 1.05, -1.0, 1.0 * 1.15])]
    assert shaped.score(["p"], ["a\nbb\nccc\n"]) == pytest.approx([2.1 - 1.0 + 1.15])
    with pytest.raises(ValueError, match="non-finite"):
        ShapedRewardModel(base, lambda r, **kw: math.inf).score_steps(["p"], [["a"]])
