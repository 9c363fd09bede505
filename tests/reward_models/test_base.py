import json
import math

import pytest

from reward_models.base import (
    AdaptedRewardModel,
    RewardModel,
    aggregate,
    as_reward_model,
    load_reward_model,
    refuse_pickles,
    write_reward_config,
)
from reward_models.rules import FunctionRewardModel, OutcomeInterpolatedRewardModel, interpolate_step_rewards
from reward_models.steps import StepFormat


def test_aggregate_values():
    assert aggregate([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate([0.5, 0.5, 0.5], "prod") == pytest.approx(0.125)
    assert aggregate([1, 2, 3], "mean") == 2
    assert aggregate([1, 2, 3], "last") == 3
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([1], "median")
    with pytest.raises(ValueError, match="empty"):
        aggregate([], "min")


class OnlySteps:
    """A user class with only get_rewards_for_steps (seed-004 shape)."""

    def get_rewards_for_steps(self, steps):
        return [len(s) / 10 for s in steps]


class StepsWithProblem:
    def get_rewards_for_steps(self, steps, problem=None):
        return [1.0 if problem and s in problem else 0.0 for s in steps]


class TextOnly:
    def get_reward_for_text(self, text):
        return float(text.count("good"))


def test_user_objects_are_adapted():
    rm = as_reward_model(OnlySteps())
    assert isinstance(rm, RewardModel)
    assert rm.score_steps(["p", "q"], [["ab", "abcd"], ["a"]]) == [[0.2, 0.4], [0.1]]
    assert rm.get_rewards_for_steps(["abc"]) == [0.3]
    assert rm.score(["p"], ["ab\nabcd\n"]) == [0.2]  # min over steps
    assert as_reward_model(StepsWithProblem()).get_rewards_for_steps(["x", "y"], problem="x+1") == [1.0, 0.0]
    # a text scorer judges each step by the text up to it
    assert as_reward_model(TextOnly()).score_steps(["good\n"], [["bad", "good"]]) == [[1.0, 2.0]]
    fn = as_reward_model(lambda p, steps: [0.5] * len(steps))
    assert isinstance(fn, AdaptedRewardModel) and fn.score_steps(["p"], [["a", "b"]]) == [[0.5, 0.5]]
    assert as_reward_model(rm) is rm
    with pytest.raises(TypeError, match="cannot use"):
        as_reward_model(3)


def test_bad_user_scores_are_refused():
    with pytest.raises(ValueError, match="2 scores for solution 0 with 1 steps"):
        as_reward_model(lambda p, s: [1.0, 2.0]).score_steps(["p"], [["a"]])
    with pytest.raises(ValueError, match="non-finite"):
        FunctionRewardModel(lambda p, s: [math.nan]).score_steps(["p"], [["a"]])


def test_rules_and_interpolation():
    rm = FunctionRewardModel(lambda p, steps: [s.endswith("!") for s in steps], step_format=StepFormat("\n\n"))
    assert rm.score_steps(["p"], [["a!", "b"]]) == [[1.0, 0.0]]
    assert rm.score(["p"], ["a!\n\nb!\n\n"]) == [1.0]
    assert interpolate_step_rewards(3, 2.0, 0.5) == [0.5, 1.0, 2.0]
    interp = OutcomeInterpolatedRewardModel(TextOnly(), decay=0.5)
    assert interp.score_steps(["good "], [["x", "good"]]) == [[1.0, 2.0]]
    with pytest.raises(ValueError):
        interpolate_step_rewards(2, 1.0, decay=1.5)


def test_arith_checker_reward_model():
    from stepdpo.tasks.arith import checker_reward_model

    rm = checker_reward_model()
    scores = rm.score_steps(["Q: 2+3*4\n", "Q: 2+3*4\n"], [["3*4=12", "2+12=14", "Answer: 14"],
                                                          ["2+3=5", "5*4=20", "Answer: 20"]])
    assert scores == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert rm.get_reward_for_problem_solution("Q: 2+3*4\n", "3*4=12\n2+12=15\n") == 0.0


def test_registry_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reward_model(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="neither"):
        load_reward_model(tmp_path / "a")
    write_reward_config(tmp_path / "b", "no-such-type")
    with pytest.raises(KeyError, match="valid types"):
        load_reward_model(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "reward_config.json").write_text(json.dumps({"type": "process"}))
    with pytest.raises(ValueError, match="format_version"):
        load_reward_model(tmp_path / "c")
    (tmp_path / "c" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle"):
        refuse_pickles(tmp_path / "c")
    with pytest.raises(ValueError, match="pickle"):
        load_reward_model(tmp_path / "c")
