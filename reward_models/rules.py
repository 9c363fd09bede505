"""Programmatic verifiers as reward models, and outcome-to-step reward interpolation.

* :class:`FunctionRewardModel` wraps any user function ``f(prompt, steps) -> list[float]``
  (or ``list[bool]``) as a process reward model. The embedded arithmetic task's checker plugs
  in this way (``stepdpo.tasks.arith.checker_reward_model``), scoring 1/0 per step.
* :func:`interpolate_step_rewards` spreads one outcome reward over the steps with a decay
  (seed 002): step ``i`` of ``n`` gets ``outcome * decay ** (n - 1 - i)``.

>>> rm = FunctionRewardModel(lambda prompt, steps: [len(s) < 5 for s in steps])
>>> rm.score_steps(["p"], [["ok", "too long"]])
[[1.0, 0.0]]
>>> [round(r, 3) for r in interpolate_step_rewards(3, 1.0, decay=0.9)]
[0.81, 0.9, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reward_models.base import RewardModel, check_scores
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat


class FunctionRewardModel(RewardModel):
    """A process reward model backed by a plain function of ``(prompt, steps)``.

    Args:
        fn: ``f(prompt: str, steps: list[str]) -> list[float | bool]``, one score per step.
        step_format: how :meth:`score` splits a completion into steps.
        aggregation: how :meth:`score` reduces step scores (``min`` by default: a solution is
            as good as its worst step).
        name: shown in error messages.
    """

    reward_type = "function"

    def __init__(self, fn: Callable[[str, list[str]], Sequence[float]], step_format: StepFormat | None = None,
                 aggregation: str = "min", name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.step_format = step_format or DEFAULT_STEP_FORMAT
        self.aggregation = aggregation
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def score_steps(self, prompts, steps):
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")
        out = [[float(v) for v in self.fn(p, list(s))] for p, s in zip(prompts, steps)]
        return check_scores(out, steps, self.name)


def interpolate_step_rewards(num_steps: int, outcome_reward: float, decay: float = 0.9) -> list[float]:
    """Outcome reward assigned backwards over ``num_steps`` with geometric ``decay`` (seed 002)."""
    if num_steps < 0:
        raise ValueError("num_steps must be >= 0")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    return [outcome_reward * decay ** (num_steps - 1 - i) for i in range(num_steps)]


class OutcomeInterpolatedRewardModel(RewardModel):
    """Turns an outcome scorer into step scores by :func:`interpolate_step_rewards`.

    ``outcome`` is any reward model (or user object accepted by ``as_reward_model``) whose
    :meth:`score` judges the whole solution.
    """

    reward_type = "interpolated"

    def __init__(self, outcome, decay: float = 0.9, step_format: StepFormat | None = None):
        from reward_models.base import as_reward_model

        self.outcome = as_reward_model(outcome)
        self.decay = decay
        self.step_format = step_format or self.outcome.step_format
        self.aggregation = "last"

    def score_steps(self, prompts, steps):
        outcomes = self.outcome.score(prompts, [self.step_format.join(s) for s in steps])
        return [interpolate_step_rewards(len(s), o, self.decay) for s, o in zip(steps, outcomes)]


__all__ = ["FunctionRewardModel", "OutcomeInterpolatedRewardModel", "interpolate_step_rewards"]
