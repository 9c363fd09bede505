"""Canonical containers shared by loaders, reward models, pair builders and trainers.

Every public format is converted into one of these three shapes:

* :class:`StepSample` - a prompt, its solution as a list of steps, and optional per-step
  labels in ``[0, 1]`` (1 = good step). PRM/ORM training and step-level evaluation use it.
* :class:`StepPair` - a step-level preference: after ``prompt`` + ``prefix_steps`` the
  ``chosen`` next step is preferred over the ``rejected`` one. Stepwise DPO trains on it.
* :class:`PreferencePair` - a whole-response preference (Bradley-Terry / outcome DPO).

Constructors validate their input and raise :class:`DataError`, whose message names the
source file, row and field when those are known (see :func:`DataError.at`).

>>> s = StepSample(prompt="Q: 2+3*4\\n", steps=["3*4=12", "2+12=14", "Answer: 14"], labels=[1, 1, 1])
>>> s.num_steps
3
>>> StepPair(prompt="Q: 1+2\\n", prefix_steps=[], chosen="1+2=3", rejected="1+2=4").margin
0.0
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class DataError(ValueError):
    """Invalid input data. ``str(err)`` names the file, row and field when known."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 field: str | None = None):
        self.reason = message
        self.source = source
        self.row = row
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source is not None:
            where.append(str(self.source))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return (", ".join(where) + ": " if where else "") + self.reason

    def at(self, *, source: str | None = None, row: int | None = None) -> DataError:
        """Return a copy located at ``source``/``row`` (keeps values already set)."""
        return DataError(self.reason, source=self.source or source,
                         row=self.row if self.row is not None else row, field=self.field)


def _check_text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=name)
    if not allow_empty and not value.strip():
        raise DataError("must not be empty", field=name)
    return value


def _check_float(value: Any, name: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        raise DataError(f"expected a number, got {type(value).__name__}", field=name)
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise DataError(f"must be finite, got {value}", field=name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DataError(f"must lie in [{lo}, {hi}], got {value}", field=name)
    return value


class _Record:
    """Shared dict conversion for the dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise DataError(f"expected an object/dict, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise DataError(f"unknown field(s) {sorted(unknown)}; expected {sorted(names)}",
                            field=sorted(unknown)[0])
        return cls(**data)


@dataclass
class StepSample(_Record):
    """A prompt and a step-by-step solution, optionally labeled per step.

    Attributes:
        prompt: the problem text (already formatted/templated as the model sees it).
        steps: the solution's steps, in order; each a non-empty string.
        labels: one float in [0, 1] per step (1 = good step, 0 = bad step; soft values are
            e.g. Monte-Carlo estimates), or None when unlabeled.
        answer: the reference final answer, when known.
        meta: free-form metadata (source, first_error index, ...).
    """

    prompt: str
    steps: list[str]
    labels: list[float] | None = None
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_text(self.prompt, "prompt")
        if not isinstance(self.steps, (list, tuple)) or len(self.steps) == 0:
            raise DataError("must be a non-empty list of strings", field="steps")
        self.steps = [_check_text(s, f"steps[{i}]") for i, s in enumerate(self.steps)]
        if self.labels is not None:
            if not isinstance(self.labels, (list, tuple)):
                raise DataError(f"expected a list, got {type(self.labels).__name__}", field="labels")
            if len(self.labels) != len(self.steps):
                raise DataError(f"has {len(self.labels)} labels for {len(self.steps)} steps",
                                field="labels")
            self.labels = [_check_float(v, f"labels[{i}]", lo=0.0, hi=1.0)
                           for i, v in enumerate(self.labels)]
        if self.answer is not None and not isinstance(self.answer, str):
            self.answer = str(self.answer)
        if not isinstance(self.meta, dict):
            raise DataError(f"expected a dict, got {type(self.meta).__name__}", field="meta")

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def first_error(self) -> int | None:
        """Index of the first step labeled below 0.5, or None when all steps are good."""
        if self.labels is None:
            return None
        return next((i for i, v in enumerate(self.labels) if v < 0.5), None)


@dataclass
class StepPair(_Record):
    """A step-level preference: after ``prompt`` + ``prefix_steps``, ``chosen`` beats ``rejected``.

    ``chosen``/``rejected`` are single steps (``is_final`` marks pairs whose steps end the
    solution, which is when the trainer appends EOS). Scores are the judge's step scores;
    ``margin`` defaults to ``chosen_score - rejected_score``; ``weight`` scales the pair's loss.
    """

    prompt: str
    prefix_steps: list[str]
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    margin: float | None = None
    weight: float = 1.0
    is_final: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_text(self.prompt, "prompt")
        if not isinstance(self.prefix_steps, (list, tuple)):
            raise DataError(f"expected a list, got {type(self.prefix_steps).__name__}", field="prefix_steps")
        self.prefix_steps = [_check_text(s, f"prefix_steps[{i}]") for i, s in enumerate(self.prefix_steps)]
        _check_text(self.chosen, "chosen")
        _check_text(self.rejected, "rejected")
        for name in ("chosen_score", "rejected_score"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, _check_float(v, name))
        if self.margin is None:
            if self.chosen_score is not None and self.rejected_score is not None:
                self.margin = self.chosen_score - self.rejected_score
            else:
                self.margin = 0.0
        self.margin = _check_float(self.margin, "margin")
        self.weight = _check_float(self.weight, "weight", lo=0.0)
        self.is_final = bool(self.is_final)
        if not isinstance(self.meta, dict):
            raise DataError(f"expected a dict, got {type(self.meta).__name__}", field="meta")


@dataclass
class PreferencePair(_Record):
    """A whole-response preference: ``chosen`` beats ``rejected`` as answers to ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_text(self.prompt, "prompt", allow_empty=True)
        _check_text(self.chosen, "chosen")
        _check_text(self.rejected, "rejected")
        if self.margin is not None:
            self.margin = _check_float(self.margin, "margin")
        if not isinstance(self.meta, dict):
            raise DataError(f"expected a dict, got {type(self.meta).__name__}", field="meta")


__all__ = ["DataError", "PreferencePair", "StepPair", "StepSample"]
