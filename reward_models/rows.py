"""Label parsing and row readers: what the trainers read before tokenizing.

* :func:`convert_step_label` turns one raw step label (bool, ``"+"``/``"-"``, 0/1, rating
  -1/0/1, soft float) into a training target; :func:`resolve_label_scheme` picks how integer
  labels read; :func:`step_targets` converts one row's labels.
* :func:`read_step_rows` (PRM: :class:`StepRow`), :func:`read_outcome_rows` (ORM:
  :class:`OutcomeRow`) and :func:`read_preference_rows` (Bradley-Terry: TRL preference rows)
  check and normalise the accepted inputs; errors name the row and the field.
* :func:`as_row_dict` and :func:`rows_of` are the small adapters they share with the trainers
  (a StepSample or dict -> a mapping; a ``datasets.Dataset`` or list -> a list of rows).

No model, tokenizer or ``transformers`` import here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reward_models.losses import IGNORE_INDEX
from reward_models.types import DataError, StepSample

LABEL_SCHEMES = ("auto", "binary", "rating")


def _is_int_like(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def convert_step_label(value: Any, *, num_labels: int = 2, scheme: str = "binary",
                       neutral: str = "positive") -> float:
    """Turn one step label into a training target.

    Returns ``P(good)`` in ``[0, 1]`` when ``num_labels == 2`` and the class index
    (``0, 1, 2`` for ratings ``-1, 0, +1``) when ``num_labels == 3``.

    * ``bool``: True = good, False = bad. ``"+"``/``"-"``: good/bad.
    * integers under ``scheme="binary"``: 1 good, 0 bad. Under ``scheme="rating"``: ratings
      ``-1`` (bad), ``0`` (neutral), ``1`` (good); with 2 classes a neutral step counts as good
      when ``neutral == "positive"``, else as bad.
    * floats in ``[0, 1]``: soft targets (2 classes only). Under ``scheme="rating"``, the
      floats ``-1.0, 0.0, 1.0`` read as ratings.

    Raises :class:`DataError` (field ``labels``) for anything else.

    >>> convert_step_label(True), convert_step_label("-"), convert_step_label(0.25)
    (1.0, 0.0, 0.25)
    >>> convert_step_label(0, scheme="rating"), convert_step_label(0, num_labels=3, scheme="rating")
    (1.0, 1.0)
    >>> convert_step_label(-1, num_labels=3, scheme="rating")
    0.0
    """
    if num_labels not in (2, 3):
        raise ValueError(f"num_labels must be 2 or 3, got {num_labels}")
    if scheme not in ("binary", "rating"):
        raise ValueError(f"scheme must be 'binary' or 'rating' here, got {scheme!r}")
    rating: int | None = None
    if isinstance(value, bool):
        rating = 1 if value else -1
    elif isinstance(value, str):
        s = value.strip()
        if s == "+":
            rating = 1
        elif s == "-":
            rating = -1
        else:
            raise DataError(f"string labels must be '+' or '-', got {value!r}", field="labels")
    elif _is_int_like(value) or (isinstance(value, float) and scheme == "rating" and value in (-1.0, 0.0, 1.0)):
        v = int(value)
        if scheme == "rating":
            if v not in (-1, 0, 1):
                raise DataError(f"rating labels must be -1, 0 or 1, got {value!r}", field="labels")
            rating = v
        else:
            if v not in (0, 1):
                raise DataError(f"integer labels must be 0 or 1 (or ratings -1/0/1 with label_scheme='rating'), "
                                f"got {value!r}", field="labels")
            rating = 1 if v == 1 else -1
    elif isinstance(value, float):
        if not (0.0 <= value <= 1.0):  # also refuses NaN
            raise DataError(f"float labels must lie in [0, 1], got {value!r}", field="labels")
        if num_labels == 3:
            if value in (0.0, 1.0):
                return 2.0 if value == 1.0 else 0.0
            raise DataError(f"soft label {value!r} needs num_labels=2 (3 classes take hard labels only)",
                            field="labels")
        return float(value)
    else:
        raise DataError(f"unsupported label type {type(value).__name__}: {value!r}", field="labels")
    if num_labels == 3:
        return float(rating + 1)
    if rating == 0:
        return 1.0 if neutral == "positive" else 0.0
    return 1.0 if rating == 1 else 0.0


@dataclass
class StepRow:
    """One PRM example before tokenization: a prompt, its steps and raw per-step labels."""

    prompt: str
    steps: list[str]
    labels: list[Any]


def as_row_dict(item: Any) -> Mapping[str, Any]:
    """A StepSample as a dict (``prompt``, ``steps``, ``labels``); a mapping as is; else :class:`DataError`."""
    if isinstance(item, StepSample):
        return {"prompt": item.prompt, "steps": item.steps, "labels": item.labels}
    if isinstance(item, Mapping):
        return item
    raise DataError(f"expected a StepSample or a dict, got {type(item).__name__}")


def read_step_rows(data: Iterable[Any]) -> list[StepRow]:
    """Read TRL stepwise rows, StepSamples or their dicts into :class:`StepRow` s.

    Errors name the row and the field.

    >>> read_step_rows([{"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]}])[0].steps
    ['a', 'b']
    """
    rows = []
    for i, item in enumerate(data):
        try:
            d = as_row_dict(item)
            if "completions" in d and "steps" in d:
                raise DataError("has both 'completions' (TRL stepwise) and 'steps'; keep one", field="steps")
            key = "completions" if "completions" in d else "steps"
            for name in ("prompt", key, "labels"):
                if name not in d or d[name] is None:
                    raise DataError("missing (need prompt, completions|steps and labels)", field=name)
            prompt, steps, labels = d["prompt"], d[key], d["labels"]
            if not isinstance(prompt, str):
                raise DataError(f"expected a string, got {type(prompt).__name__}", field="prompt")
            if isinstance(steps, str) or not isinstance(steps, Sequence) or len(steps) == 0:
                raise DataError("must be a non-empty list of step strings", field=key)
            if isinstance(labels, str) or not isinstance(labels, Sequence):
                raise DataError(f"expected a list, got {type(labels).__name__}", field="labels")
            if len(labels) != len(steps):
                raise DataError(f"has {len(labels)} labels for {len(steps)} steps", field="labels")
            for j, s in enumerate(steps):
                if not isinstance(s, str) or not s.strip():
                    raise DataError("a step must be a non-empty string", field=f"{key}[{j}]")
            rows.append(StepRow(prompt=prompt, steps=list(steps), labels=list(labels)))
        except DataError as e:
            raise e.at(row=i) from None
    return rows


def resolve_label_scheme(rows: Sequence[StepRow], scheme: str, num_labels: int) -> str:
    """``"auto"``: ratings when 3 classes are trained or any label is -1 (int, or float from a
    datasets column), else binary."""
    if scheme != "auto":
        return scheme
    if num_labels == 3:
        return "rating"
    for r in rows:
        if any(not isinstance(v, bool) and isinstance(v, (int, float)) and v == -1 for v in r.labels):
            return "rating"
    return "binary"


def step_targets(row: StepRow, *, num_labels: int, scheme: str, neutral: str, last_step_only: bool) -> list[float]:
    """Per-step training targets of one row (``-100`` for steps masked by ``last_step_only``)."""
    out = []
    for j, v in enumerate(row.labels):
        if last_step_only and j != len(row.labels) - 1:
            out.append(float(IGNORE_INDEX))
            continue
        try:
            out.append(convert_step_label(v, num_labels=num_labels, scheme=scheme, neutral=neutral))
        except DataError as e:
            raise DataError(e.reason, field=f"labels[{j}]") from None
    return out


def rows_of(dataset) -> list[Any]:
    """The rows of a trainer's dataset as a list: ``None`` -> ``[]``; a ``datasets.Dataset`` or any
    iterable of rows -> a list. A string, bytes or a single mapping raises ``TypeError``."""
    if dataset is None:
        return []
    try:
        from datasets import Dataset

        if isinstance(dataset, Dataset):
            return list(dataset)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(dataset, (str, bytes, Mapping)):
        raise TypeError("train_dataset must be a list of rows, StepSamples or a datasets.Dataset")
    return list(dataset)


@dataclass
class OutcomeRow:
    """One ORM example: a prompt, a completion (text or steps) and an outcome label in [0, 1]."""

    prompt: str
    completion: str | list[str]
    label: float


def read_outcome_rows(data: Iterable[Any]) -> list[OutcomeRow]:
    """Read ORM rows: TRL unpaired rows (``prompt``, ``completion``, ``label``), or StepSamples /
    step dicts (``prompt``, ``steps``, ``label`` or ``labels``; the outcome of per-step labels is
    their minimum: a solution is as good as its worst step).

    >>> read_outcome_rows([{"prompt": "Q", "steps": ["a", "b"], "labels": [1, 0]}])[0].label
    0.0
    """
    rows = []
    for i, item in enumerate(data):
        try:
            d = as_row_dict(item)
            if not isinstance(d.get("prompt"), str):
                raise DataError("missing or not a string", field="prompt")
            if isinstance(d.get("completion"), str):
                completion: str | list[str] = d["completion"]
                if not completion.strip():
                    raise DataError("must not be empty", field="completion")
            elif isinstance(d.get("steps"), Sequence) and not isinstance(d.get("steps"), str) and d["steps"]:
                completion = list(d["steps"])
            else:
                raise DataError("need a 'completion' string or a non-empty 'steps' list", field="completion")
            if d.get("label") is not None:
                label = convert_step_label(d["label"])
            elif d.get("labels") is not None:
                labels = [convert_step_label(v) for v in d["labels"]]
                if not labels:
                    raise DataError("must not be empty", field="labels")
                label = min(labels)
            else:
                raise DataError("missing (need 'label', or per-step 'labels')", field="label")
            rows.append(OutcomeRow(prompt=d["prompt"], completion=completion, label=label))
        except DataError as e:
            raise e.at(row=i) from None
    return rows


def read_preference_rows(data: Iterable[Any]) -> list[dict[str, Any]]:
    """PreferencePair objects or dicts -> TRL preference rows (``prompt``?, ``chosen``, ``rejected``, ``margin``?)."""
    from reward_models.types import PreferencePair

    rows = []
    for i, item in enumerate(data):
        try:
            d = item.to_dict() if isinstance(item, PreferencePair) else item
            if not isinstance(d, Mapping):
                raise DataError(f"expected a PreferencePair or a dict, got {type(d).__name__}")
            pair = PreferencePair(prompt=d.get("prompt", ""), chosen=d.get("chosen"), rejected=d.get("rejected"),
                                  margin=d.get("margin"))
        except DataError as e:
            raise e.at(row=i) from None
        row = {"chosen": pair.prompt + pair.chosen, "rejected": pair.prompt + pair.rejected}
        if pair.margin is not None:
            row["margin"] = pair.margin
        rows.append(row)
    has_margin = {("margin" in r) for r in rows}
    if len(has_margin) > 1:
        raise DataError("some rows have a 'margin' and some do not; give it on every row or none", field="margin")
    return rows


__all__ = ["LABEL_SCHEMES", "OutcomeRow", "StepRow", "as_row_dict", "convert_step_label", "read_outcome_rows",
           "read_preference_rows", "read_step_rows", "resolve_label_scheme", "rows_of", "step_targets"]
