"""Combining reward models: process + outcome (the reference API's ``CombinedRewardModel``) and ensembles.

* :class:`CombinedRewardModel` - ``process_weight * aggregate(step scores) + outcome_weight *
  outcome score`` (the reference API defaults: 0.7 / 0.3, mean over steps); a missing part counts 0,
  as in the reference API. Per step: ``process_weight * step score + outcome_weight * outcome score of
  the prefix ending at that step``.
* :class:`ShapedRewardModel` - a user shaping function over another model's step scores
  (the reference API's reward shaping; :func:`shaped_reward` is its example).
* :class:`EnsembleRewardModel` - a weighted mean (or min) of several reward models, with the
  members' disagreement (population standard deviation) per step, which pair building uses to
  skip steps the judges disagree on.

Both take built reward models, any user object with ``get_rewards_for_steps`` (or
``score_steps``, ``get_reward_for_text``, a callable), or saved directories (reference-API style),
and save/load as directories of directories.

>>> from reward_models.rules import FunctionRewardModel
>>> a = FunctionRewardModel(lambda p, s: [1.0] * len(s)); b = FunctionRewardModel(lambda p, s: [0.0] * len(s))
>>> EnsembleRewardModel([a, b]).score_steps_with_uncertainty(["p"], [["x"]])
([[0.5]], [[0.5]])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward_models.base import (
    AGGREGATIONS,
    CONFIG_NAME,
    RewardModel,
    aggregate,
    as_reward_model,
    check_scores,
    load_reward_model,
    register_reward_model,
    write_reward_config,
)
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat
from reward_models.types import DataError

ENSEMBLE_REDUCTIONS = ("mean", "min")
PROCESS_DIR = "process_reward_model"  # reference-API sub-directory names
OUTCOME_DIR = "outcome_reward_model"


def _build(obj: Any, kind: str, device: str | None) -> RewardModel | None:
    """A reward model from a built object, a saved directory, or (the reference API) a model name."""
    if obj is None:
        return None
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir() and ((path / CONFIG_NAME).exists() or kind == "process"):
            return load_reward_model(path, device=device)
        # a plain model directory or a hub name: the reference API builds the class directly
        if kind == "process":
            from reward_models.process import ProcessRewardModel

            return ProcessRewardModel(obj, device)
        from reward_models.outcome import OutcomeRewardModel

        return OutcomeRewardModel(obj, device)
    return as_reward_model(obj)


def common_scale(models: Sequence[RewardModel | None]) -> str:
    """The members' :attr:`~reward_models.base.RewardModel.score_scale` when they share one, else ``raw``
    (a mix of probabilities and log-odds is neither).

    >>> from reward_models.rules import FunctionRewardModel
    >>> common_scale([FunctionRewardModel(lambda p, s: [0.5]), None])
    'probability'
    """
    scales = {m.score_scale for m in models if m is not None}
    return scales.pop() if len(scales) == 1 else "raw"


def weighted_mean_std(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float, float]:
    """``(weighted mean, min, population std)`` of members' scores for one step.

    >>> weighted_mean_std([1.0, 0.0], [0.5, 0.5])
    (0.5, 0.0, 0.5)
    """
    total = sum(weights)
    mean = sum(w * v for w, v in zip(weights, values)) / total
    plain = sum(values) / len(values)
    std = math.sqrt(sum((v - plain) ** 2 for v in values) / len(values))
    return mean, min(values), std


@register_reward_model("combined")
class CombinedRewardModel(RewardModel):
    """Process and outcome reward models combined with fixed weights (the reference API).

    Args:
        process_model_name: a reward model / user object / saved directory / model name, or None.
        outcome_model_name: likewise for the outcome judge, or None.
        process_weight, outcome_weight: weights of the two parts (the reference API: 0.7 and 0.3).
        device: passed to models loaded from paths (default CUDA when available, else CPU).
        step_aggregation: how step scores become one process score: min, prod, mean, last, ...
        step_format: how completions are split into steps (default: the process model's).
        max_steps: score at most this many leading steps of a completion (the reference API), or None.
    """

    def __init__(self, process_model_name=None, outcome_model_name=None, process_weight: float = 0.7,
                 outcome_weight: float = 0.3, device: str | None = None, step_aggregation: str = "mean",
                 step_format: StepFormat | None = None, max_steps: int | None = None):
        if step_aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown step_aggregation {step_aggregation!r}; expected one of {AGGREGATIONS}")
        for name, w in (("process_weight", process_weight), ("outcome_weight", outcome_weight)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"{name} must be a finite number, got {w!r}")
        self.device = device
        self.process_weight = float(process_weight)
        self.outcome_weight = float(outcome_weight)
        self.step_aggregation = step_aggregation
        self.max_steps = max_steps
        self._step_format = step_format
        self.process_reward_model = _build(process_model_name, "process", device)
        self.outcome_reward_model = _build(outcome_model_name, "outcome", device)

    # reference-API code assigns these attributes directly; accept user objects there too
    @property
    def process_reward_model(self) -> RewardModel | None:
        return self._process

    @process_reward_model.setter
    def process_reward_model(self, value) -> None:
        self._process = None if value is None else as_reward_model(value)

    @property
    def outcome_reward_model(self) -> RewardModel | None:
        return self._outcome

    @outcome_reward_model.setter
    def outcome_reward_model(self, value) -> None:
        self._outcome = None if value is None else as_reward_model(value)

    @property
    def step_format(self) -> StepFormat:  # type: ignore[override]
        if self._step_format is not None:
            return self._step_format
        if self._process is not None:
            return self._process.step_format
        return self._outcome.step_format if self._outcome is not None else DEFAULT_STEP_FORMAT

    @step_format.setter
    def step_format(self, value: StepFormat) -> None:
        self._step_format = value

    @property
    def step_delimiter(self) -> str:  # reference-API name for the step separator
        return self.step_format.separator

    @step_delimiter.setter
    def step_delimiter(self, value: str) -> None:
        fmt = self.step_format
        self._step_format = StepFormat(separator=value, tag=fmt.tag, final_separator=fmt.final_separator)

    @property
    def aggregation(self) -> str:  # type: ignore[override]
        return self.step_aggregation

    @property
    def score_scale(self) -> str:  # type: ignore[override]
        return common_scale([self._process, self._outcome])

    # -- scoring ---------------------------------------------------------------------------------
    def score_steps(self, prompts, steps) -> list[list[float]]:
        prompts, steps = list(prompts), [list(s) for s in steps]
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")
        proc = self._process.score_steps(prompts, steps) if self._process is not None else None
        outc = self._outcome.score_steps(prompts, steps) if self._outcome is not None else None
        out = []
        for i, st in enumerate(steps):
            out.append([self.process_weight * (proc[i][j] if proc else 0.0)
                        + self.outcome_weight * (outc[i][j] if outc else 0.0) for j in range(len(st))])
        return out

    def extract_steps(self, text: str) -> list[str]:
        steps = self.step_format.split(text) or [text]
        return steps[: self.max_steps] if self.max_steps else steps

    def score(self, prompts, completions) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        process = [0.0] * len(prompts)
        if self._process is not None:
            step_scores = self._process.score_steps(prompts, [self.extract_steps(c) for c in completions])
            process = [aggregate(s, self.step_aggregation) for s in step_scores]
        outcome = self._outcome.score(prompts, completions) if self._outcome is not None else [0.0] * len(prompts)
        return [self.process_weight * p + self.outcome_weight * o for p, o in zip(process, outcome)]

    def extract_and_aggregate_steps(self, text: str) -> tuple[list[str], list[float], float]:
        """Reference-API helper: ``(steps, process step rewards, aggregated process reward)``."""
        steps = self.extract_steps(text)
        rewards = self._process.score_steps([""], [steps])[0] if self._process is not None else [0.0] * len(steps)
        return steps, rewards, aggregate(rewards, self.step_aggregation) if rewards else 0.0

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """``reward_config.json`` plus ``process_reward_model/`` and ``outcome_reward_model/`` sub-dirs."""
        path = Path(path)
        for sub, part in ((PROCESS_DIR, self._process), (OUTCOME_DIR, self._outcome)):
            if part is not None:
                _save_member(part, path / sub, sub)
        write_reward_config(path, "combined", process_weight=self.process_weight,
                            outcome_weight=self.outcome_weight, step_aggregation=self.step_aggregation,
                            step_format=self._step_format, max_steps=self.max_steps,
                            step_delimiter=self.step_delimiter)  # reference-API load() reads it

    @classmethod
    def _load_dir(cls, path, cfg, device: str | None = None, **kwargs):
        path = Path(path)
        file = str(path / CONFIG_NAME)
        for key in ("process_weight", "outcome_weight"):
            if key not in cfg:
                raise DataError("missing key", source=file, field=key)
        fmt = cfg.get("step_format")
        obj = cls(process_weight=cfg["process_weight"], outcome_weight=cfg["outcome_weight"],
                  step_aggregation=cfg.get("step_aggregation", "mean"), device=device,
                  step_format=StepFormat.from_dict(fmt) if fmt else None, max_steps=cfg.get("max_steps"))
        if (path / PROCESS_DIR).is_dir():
            obj.process_reward_model = load_reward_model(path / PROCESS_DIR, device=device, **kwargs)
        if (path / OUTCOME_DIR).is_dir():
            obj.outcome_reward_model = load_reward_model(path / OUTCOME_DIR, device=device, **kwargs)
        return obj

    @classmethod
    def load(cls, path, device: str | None = None, **kwargs):  # reference-API signature
        return super().load(path, device=device, **kwargs)

    def __repr__(self) -> str:
        return (f"CombinedRewardModel(process={self._process!r}, outcome={self._outcome!r}, "
                f"weights=({self.process_weight}, {self.outcome_weight}), step_aggregation={self.step_aggregation!r})")


def _save_member(model: RewardModel, path: Path, name: str) -> None:
    try:
        model.save(path)
    except NotImplementedError as e:
        raise NotImplementedError(f"cannot save {name}: {e}") from None


@register_reward_model("ensemble")
class EnsembleRewardModel(RewardModel):
    """Several reward models judged together.

    Args:
        model_paths_or_models: reward models, user objects, or saved directories.
        weights: one non-negative weight per member (default equal); scores are the weighted
            mean ``sum(w * r) / sum(w)``, which equals the reference API's weighted sum for its default
            weights ``1/n``.
        reduce: ``mean`` (weighted mean) or ``min`` (the most pessimistic member).
        device: passed to members loaded from paths.
    """

    def __init__(self, model_paths_or_models: Sequence[Any], weights: Sequence[float] | None = None,
                 reduce: str = "mean", device: str | None = None):
        members = list(model_paths_or_models)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if reduce not in ENSEMBLE_REDUCTIONS:
            raise ValueError(f"unknown reduce {reduce!r}; expected one of {ENSEMBLE_REDUCTIONS}")
        if weights is None:
            weights = [1.0 / len(members)] * len(members)
        weights = [float(w) for w in weights]
        if len(weights) != len(members):
            raise ValueError(f"got {len(weights)} weights for {len(members)} members")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
        self.models = [load_reward_model(m, device=device) if isinstance(m, (str, os.PathLike)) else as_reward_model(m)
                       for m in members]
        self.weights = weights
        self.reduce = reduce
        self.step_format = self.models[0].step_format
        self.aggregation = self.models[0].aggregation

    @property
    def score_scale(self) -> str:  # type: ignore[override]
        return common_scale(self.models)

    def _reduce(self, columns: list[list[float]]) -> tuple[list[float], list[float]]:
        """Per item, the reduced score and the members' std; ``columns[m][k]`` = member m, item k."""
        scores, stds = [], []
        for k in range(len(columns[0])):
            mean, low, std = weighted_mean_std([col[k] for col in columns], self.weights)
            scores.append(mean if self.reduce == "mean" else low)
            stds.append(std)
        return scores, stds

    def score_steps_with_uncertainty(self, prompts, steps):
        """``(scores, stds)``: reduced step scores and the members' disagreement, per step."""
        prompts, steps = list(prompts), [list(s) for s in steps]
        per_member = [m.score_steps(prompts, steps) for m in self.models]
        scores, stds = [], []
        for i, st in enumerate(steps):
            s, d = self._reduce([pm[i] for pm in per_member]) if st else ([], [])
            scores.append(s)
            stds.append(d)
        return scores, stds

    def score_steps(self, prompts, steps) -> list[list[float]]:
        return self.score_steps_with_uncertainty(prompts, steps)[0]

    def score_with_uncertainty(self, prompts, completions) -> tuple[list[float], list[float]]:
        per_member = [m.score(list(prompts), list(completions)) for m in self.models]
        return self._reduce(per_member)

    def score(self, prompts, completions) -> list[float]:
        return self.score_with_uncertainty(prompts, completions)[0]

    def save(self, path: str | os.PathLike) -> None:
        """``reward_config.json`` plus one sub-directory per member (``member_0``, ``member_1``, ...)."""
        path = Path(path)
        for i, m in enumerate(self.models):
            _save_member(m, path / f"member_{i}", f"ensemble member {i}")
        write_reward_config(path, "ensemble", num_members=len(self.models), weights=self.weights,
                            reduce=self.reduce)

    @classmethod
    def _load_dir(cls, path, cfg, device: str | None = None, **kwargs):
        path = Path(path)
        file = str(path / CONFIG_NAME)
        for key in ("num_members", "weights", "reduce"):
            if key not in cfg:
                raise DataError("missing key", source=file, field=key)
        dirs = [path / f"member_{i}" for i in range(int(cfg["num_members"]))]
        missing = [d.name for d in dirs if not d.is_dir()]
        if missing:
            raise DataError(f"member directories {missing} are missing", source=file, field="num_members")
        return cls([load_reward_model(d, device=device, **kwargs) for d in dirs], weights=cfg["weights"],
                   reduce=cfg["reduce"])

    @classmethod
    def load(cls, path, device: str | None = None, **kwargs):
        return super().load(path, device=device, **kwargs)

    def __repr__(self) -> str:
        return f"EnsembleRewardModel({len(self.models)} members, weights={self.weights}, reduce={self.reduce!r})"


def shaped_reward(base_reward: float, confidence: float, complexity: float) -> float:
    """The reference API's example shaping: boost positive rewards of complex steps by ``1 + 0.5 * complexity``.

    >>> shaped_reward(2.0, 1.0, 0.5), shaped_reward(-1.0, 1.0, 0.5)
    (2.5, -1.0)
    """
    if base_reward > 0:
        return base_reward * (1 + 0.5 * complexity)
    return base_reward


class ShapedRewardModel(RewardModel):
    """Applies a user shaping function to another reward model's step scores (the reference API's reward shaping).

    ``shape(reward, prompt=..., steps=..., index=...) -> float`` is called once per step with the
    step's score, the problem, the solution's steps and the step index; ``score`` aggregates the
    shaped step scores with ``aggregation``. It wraps user code, so it is not saveable.

    >>> from reward_models.rules import FunctionRewardModel
    >>> base = FunctionRewardModel(lambda p, s: [1.0, -1.0])
    >>> ShapedRewardModel(base, lambda r, prompt, steps, index: r * (index + 1)).score_steps(["p"], [["a", "b"]])
    [[1.0, -2.0]]
    """

    reward_type = "shaped"
    score_scale = "raw"  # whatever the user's shaping function returns

    def __init__(self, model, shape, aggregation: str | None = None):
        if not callable(shape):
            raise TypeError(f"shape must be callable, got {type(shape).__name__}")
        self.model = as_reward_model(model)
        self.shape = shape
        self.step_format = self.model.step_format
        self.aggregation = aggregation or self.model.aggregation

    def score_steps(self, prompts, steps):
        prompts, steps = list(prompts), [list(s) for s in steps]
        base = self.model.score_steps(prompts, steps)
        out = [[float(self.shape(r, prompt=p, steps=st, index=j)) for j, r in enumerate(row)]
               for p, st, row in zip(prompts, steps, base)]
        return check_scores(out, steps, f"shape function {getattr(self.shape, '__name__', '')}")


__all__ = ["CombinedRewardModel", "ENSEMBLE_REDUCTIONS", "EnsembleRewardModel", "ShapedRewardModel",
           "shaped_reward", "weighted_mean_std"]
