"""Loaders for public step-level and preference data formats, converted to canonical types.

:func:`load_samples` reads a local file (``.json``, ``.jsonl``, ``.jsonl.gz``/``.json.gz``,
``.parquet``), a directory of such files (sorted order) or a ``datasets`` hub name, detects
the format from the first row when ``format`` is None, and returns a list of
:class:`~reward_models.types.StepSample` (step formats), :class:`~reward_models.types.StepPair`
or :class:`~reward_models.types.PreferencePair` (pair formats).

Formats (see :data:`FORMATS`):

============== ===============================================================================
prm800k        PRM800K phase 1/2 rows (``question``, ``label.steps[].completions/rating``)
math_shepherd  ``{"input": "... Step 1: ... ки\\n...", "label": same with ки -> +/-}``
trl_stepwise   TRL stepwise supervision ``{"prompt", "completions", "labels"}``
input_value_label  seed 003: ``{"input", "value": [steps], "label": ["+", "-", ...]}``
rlhflow        RLHFlow PRM data: ``{"conversations": [user step, assistant "+"/"-", ...]}``
processbench   ProcessBench ``{"problem", "steps", "label": first error index or -1}``
step_dpo       Step-DPO pairs ``{"prompt", "initial_reason_steps", "chosen", "rejected", ...}``
chosen_rejected  hh-rlhf transcripts, ``{"prompt", "chosen", "rejected"}`` or chat messages
step_sample    our own :meth:`StepSample.to_dict` rows (what :func:`save_samples` writes)
step_pair      our own :meth:`StepPair.to_dict` rows
============== ===============================================================================

Label conventions (all become floats in ``[0, 1]``, 1 = good step): booleans, ``"+"``/``"-"``,
``1``/``0`` (and floats in [0, 1]); PRM800K ratings ``+1 -> 1.0``, ``-1 -> 0.0`` and the neutral
``0`` as chosen by ``neutral``: ``"positive"`` (1.0, the default, as PRM800K practice counts
neutral steps as not wrong), ``"negative"`` (0.0) or ``"half"`` (0.5).

Row numbers in errors: the 1-based **line number** for JSONL files, the 0-based **index** for
JSON arrays, parquet files and hub datasets. Every row converts or fails with a
:class:`~reward_models.types.DataError` naming file, row and field; with ``skip_invalid=True``
bad rows are skipped, counted in :class:`LoadStats`, logged, and written to ``rejects_path``.

>>> rows = [{"input": "Q: 1+2?", "value": ["1+2=3", "Answer: 3"], "label": ["+", "+"]}]
>>> [s.labels for s in convert_rows(rows)]
[[1.0, 1.0]]

Why one ~800-line module: the format table and its converters are the one parser per format that
every route uses (load_samples, load_pairs, the trainer's rows); keeping them beside the readers
keeps the formats in one place, as ``trl/data_utils.py`` does.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reward_models.steps import StepFormat
from reward_models.types import DataError, PreferencePair, StepPair, StepSample

logger = logging.getLogger(__name__)

Item = StepSample | StepPair | PreferencePair
NEUTRAL = {"positive": 1.0, "negative": 0.0, "half": 0.5}
SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
SHEPHERD_TAG = "ки"
HH_ASSISTANT = "\n\nAssistant:"
ANSWER_MARKERS = ("The answer is", "\\boxed")
STEP_DPO_KEYS = ("prompt", "initial_reason_steps", "chosen", "rejected")


@dataclass
class LoadOptions:
    """Per-format settings shared by the converters.

    Attributes:
        neutral: value of a PRM800K rating 0: ``positive`` (1.0), ``negative`` (0.0), ``half`` (0.5).
        step_format: splits Step-DPO ``initial_reason_steps`` into prefix steps (default ``"\\n"``).
        render_chat: turns a list of chat messages into prompt text for chat-style
            chosen/rejected rows; default :func:`render_messages` (hh-rlhf style).
    """

    neutral: str = field(default="positive", metadata={"help": "PRM800K rating 0: positive, negative or half"})
    step_format: StepFormat = field(default_factory=StepFormat,
                                    metadata={"help": "splits Step-DPO initial_reason_steps into steps"})
    render_chat: Callable[[list[dict[str, Any]]], str] | None = field(
        default=None, metadata={"help": "chat messages -> prompt text (default: hh-rlhf style)"})

    def __post_init__(self) -> None:
        if self.neutral not in NEUTRAL:
            raise ValueError(f"neutral must be one of {sorted(NEUTRAL)}, got {self.neutral!r}")


@dataclass
class LoadStats:
    """What a load did. ``rows`` = rows read, ``rejected`` = rows skipped (``skip_invalid``).

    ``formats`` maps each source file to its (detected or given) format; ``errors`` keeps the
    first 20 rejection messages; ``rejects_path`` is where all rejected rows were written.
    """

    rows: int = 0
    items: int = 0
    rejected: int = 0
    formats: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    rejects_path: str | None = None


# -- small field helpers ---------------------------------------------------------------------------
def _get(row: dict, key: str, types: type | tuple[type, ...], *, name: str | None = None,
         optional: bool = False) -> Any:
    name = name or key
    if key not in row or row[key] is None:
        if optional:
            return None
        raise DataError("missing", field=name)
    value = row[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
        want = " or ".join(t.__name__ for t in _as_tuple(types))
        raise DataError(f"expected {want}, got {type(value).__name__}", field=name)
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _text(row: dict, key: str, name: str | None = None) -> str:
    value = _get(row, key, str, name=name)
    if not value.strip():
        raise DataError("must not be empty", field=name or key)
    return value


def to_label(value: Any, name: str = "label") -> float:
    """One step label in any supported convention -> float in [0, 1].

    >>> [to_label(v) for v in (True, "-", 1, 0.25, "+")]
    [1.0, 0.0, 1.0, 0.25, 1.0]
    """
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        v = value.strip()
        if v in ("+", "-"):
            return 1.0 if v == "+" else 0.0
        raise DataError(f"expected '+' or '-', got {value!r}", field=name)
    if isinstance(value, (int, float)) and 0.0 <= value <= 1.0:
        return float(value)
    raise DataError(f"expected a bool, '+'/'-' or a number in [0, 1], got {value!r}", field=name)


def _labels(values: Any, n: int, name: str) -> list[float]:
    if not isinstance(values, list):
        raise DataError(f"expected a list, got {type(values).__name__}", field=name)
    if len(values) != n:
        raise DataError(f"has {len(values)} labels for {n} steps", field=name)
    return [to_label(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _steps(values: Any, name: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise DataError("expected a non-empty list of strings", field=name)
    for i, s in enumerate(values):
        if not isinstance(s, str) or not s.strip():
            raise DataError("expected a non-empty string", field=f"{name}[{i}]")
    return list(values)


def _split_question(text: str, name: str) -> tuple[str, str]:
    """Split ``question + first step``: at ``"Step 1:"``, else at the last line break."""
    at = text.find("Step 1:")
    if at > 0:
        return text[:at].rstrip(), text[at:]
    at = text.rstrip().rfind("\n")
    if at > 0:
        return text[:at].rstrip(), text[at + 1:]
    raise DataError("cannot tell where the question ends and the first step begins "
                    "(no 'Step 1:' and no line break)", field=name)


# -- converters: row dict -> list of items -------------------------------------------------------
def _pre_generated(comps: list, pre: Any, i: int) -> int | None:
    """Index of the completion that is the pre-generated (phase 2) step ``i``, if any."""
    if not isinstance(pre, list) or i >= len(pre):
        return None
    return next((j for j, c in enumerate(comps) if isinstance(c, dict) and c.get("text") == pre[i]), None)


def _prm800k(row: dict, opt: LoadOptions) -> list[Item]:
    """PRM800K: rebuild the labeled trajectory and stop at its first error.

    Per step: ``completions[chosen_completion]``; else ``human_completion`` (phase 1; a human
    step counts as +1 when unrated); else the completion equal to the question's
    ``pre_generated_steps[i]`` (phase 2); else a sole rated completion; else the first one
    rated -1. The walk stops after the first step rated -1 (kept, label 0) and where no
    completion applies (a ``give_up``). Rows are kept whatever their ``finish_reason``
    (``bad_problem`` included): it is in ``meta`` for filtering.
    """
    question = _get(row, "question", dict)
    problem = _text(question, "problem", "question.problem")
    label = _get(row, "label", dict)
    steps_in = _get(label, "steps", list, name="label.steps")
    pre = question.get("pre_generated_steps")
    steps: list[str] = []
    labels: list[float] = []
    stopped = None
    for i, st in enumerate(steps_in):
        where = f"label.steps[{i}]"
        if not isinstance(st, dict):
            raise DataError(f"expected an object, got {type(st).__name__}", field=where)
        comps = st.get("completions") or []
        if not isinstance(comps, list):
            raise DataError("expected a list", field=f"{where}.completions")
        chosen, human = st.get("chosen_completion"), st.get("human_completion")
        if chosen is not None:
            if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(comps):
                raise DataError(f"index {chosen!r} out of range for {len(comps)} completions",
                                field=f"{where}.chosen_completion")
            comp, cname = comps[chosen], f"{where}.completions[{chosen}]"
        elif human is not None:
            comp, cname = ({"text": human, "rating": 1} if isinstance(human, str) else human), \
                f"{where}.human_completion"
            if isinstance(comp, dict) and comp.get("rating") is None:
                comp = {**comp, "rating": 1}  # a labeler's own step counts as correct
        elif (j := _pre_generated(comps, pre, i)) is not None:
            comp, cname = comps[j], f"{where}.completions[{j}]"  # phase 2: the pre-generated step
        elif len(comps) == 1 and isinstance(comps[0], dict) and comps[0].get("rating") is not None:
            comp, cname = comps[0], f"{where}.completions[0]"
        else:
            bad = [j for j, c in enumerate(comps) if isinstance(c, dict) and c.get("rating") == -1]
            if not bad:  # labeler gave up / ran out of time here: the trajectory ends
                stopped = f"no chosen completion at step {i}"
                break
            comp, cname = comps[bad[0]], f"{where}.completions[{bad[0]}]"
        if not isinstance(comp, dict):
            raise DataError(f"expected an object, got {type(comp).__name__}", field=cname)
        text = _text(comp, "text", f"{cname}.text")
        rating = comp.get("rating")
        if rating not in (-1, 0, 1) or isinstance(rating, bool):
            raise DataError(f"expected a rating -1, 0 or 1, got {rating!r}", field=f"{cname}.rating")
        steps.append(text)
        labels.append({1: 1.0, -1: 0.0}.get(rating, NEUTRAL[opt.neutral]))
        if rating == -1:
            stopped = f"first error at step {i}"
            break
    if not steps:
        raise DataError("no usable step (no chosen, human or rated completion in the first step)",
                        field="label.steps")
    meta = {"finish_reason": label.get("finish_reason"), "stopped": stopped or "end",
            "labeler": row.get("labeler"), "generation": row.get("generation"),
            "is_quality_control_question": row.get("is_quality_control_question"),
            "is_initial_screening_question": row.get("is_initial_screening_question")}
    answer = question.get("ground_truth_answer")
    return [StepSample(problem, steps, labels, answer=None if answer is None else str(answer), meta=meta)]


def _math_shepherd(row: dict, opt: LoadOptions) -> list[Item]:
    """Math-Shepherd: steps end at ``ки``; the ``label`` text has ``+``/``-`` at those places."""
    text, marked = _text(row, "input"), _text(row, "label")
    parts = text.split(SHEPHERD_TAG)
    n_tags = len(parts) - 1
    if n_tags == 0:
        raise DataError(f"no '{SHEPHERD_TAG}' step tag", field="input")
    if parts[-1].strip():
        raise DataError(f"text after the last '{SHEPHERD_TAG}' tag: {parts[-1][:60]!r}", field="input")
    labels, pos = [], 0
    for k, seg in enumerate(parts[:-1]):
        if marked[pos:pos + len(seg)] != seg:
            got = marked.count("+") + marked.count("-")
            raise DataError(f"does not match 'input' before tag {k} ({n_tags} '{SHEPHERD_TAG}' tags; "
                            f"label has {got} '+'/'-' characters)", field="label")
        pos += len(seg)
        mark = marked[pos:pos + 1]
        if mark not in ("+", "-"):
            raise DataError(f"expected '+' or '-' at tag {k} of {n_tags}, got {mark!r}", field="label")
        labels.append(1.0 if mark == "+" else 0.0)
        pos += 1
    if marked[pos:].strip():
        raise DataError(f"has {len(marked[pos:])} extra characters after the last mark", field="label")
    question, first = _split_question(parts[0], "input")
    steps = [first.strip()] + [p.strip() for p in parts[1:-1]]
    for i, s in enumerate(steps):
        if not s:
            raise DataError(f"step {i} is empty", field="input")
    return [StepSample(question, steps, labels, meta={"task": row.get("task")})]


def _trl_stepwise(row: dict, opt: LoadOptions) -> list[Item]:
    prompt = _text(row, "prompt")
    steps = _steps(row.get("completions"), "completions")
    return [StepSample(prompt, steps, _labels(row.get("labels"), len(steps), "labels"))]


def _input_value_label(row: dict, opt: LoadOptions) -> list[Item]:
    prompt = _text(row, "input")
    steps = _steps(row.get("value"), "value")
    return [StepSample(prompt, steps, _labels(row.get("label"), len(steps), "label"))]


def _rlhflow(row: dict, opt: LoadOptions) -> list[Item]:
    """RLHFlow: user turns are steps (the first also holds the question), assistant turns +/-."""
    key = "conversations" if "conversations" in row else "messages"
    conv = _get(row, key, list)
    if len(conv) < 2 or len(conv) % 2:
        raise DataError(f"expected alternating user/assistant turns, got {len(conv)} messages", field=key)
    steps, labels = [], []
    for i, msg in enumerate(conv):
        name = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise DataError(f"expected an object, got {type(msg).__name__}", field=name)
        want = "user" if i % 2 == 0 else "assistant"
        if msg.get("role") != want:
            raise DataError(f"expected role {want!r}, got {msg.get('role')!r}", field=f"{name}.role")
        content = _get(msg, "content", str, name=f"{name}.content")
        if want == "user":
            steps.append(content)
        else:
            labels.append(to_label(content, f"{name}.content"))
    question, steps[0] = _split_question(steps[0], f"{key}[0].content")
    return [StepSample(question, [s.strip() for s in steps], labels)]


def _step_dpo(row: dict, opt: LoadOptions) -> list[Item]:
    """Step-DPO: prefix = ``initial_reason_steps`` split by ``opt.step_format``.

    In Math-Step-DPO-10K the prefix ends with the next step's label (``"...\\nStep 3:"``) and
    ``chosen``/``rejected`` hold that step's text: an unfinished last piece (text after the
    last separator) is moved to the front of both, so ``prefix + chosen`` reads as the original.
    ``is_final`` is True when the chosen step contains "The answer is" or "\\boxed".
    """
    prompt = _text(row, "prompt")
    init = _get(row, "initial_reason_steps", str, optional=True) or ""
    fmt = opt.step_format
    head, sep, tail = init.rpartition(fmt.separator)
    if not sep:  # no separator at all: the whole text is an unfinished step
        head, tail = "", init
    carry = tail if tail.strip() else ""
    chosen = (carry + _text(row, "chosen")).strip(fmt.separator)
    rejected = (carry + _text(row, "rejected")).strip(fmt.separator)
    meta = {k: v for k, v in row.items() if k not in STEP_DPO_KEYS and v is not None}  # dataset, answer, ...
    return [StepPair(prompt, fmt.split(head), chosen, rejected,
                     is_final=any(m in chosen for m in ANSWER_MARKERS), meta=meta)]


def render_messages(messages: list[dict[str, Any]]) -> str:
    """Chat messages as hh-rlhf text, ending with the assistant marker.

    >>> render_messages([{"role": "user", "content": "Hi"}])
    '\\n\\nHuman: Hi\\n\\nAssistant:'
    """
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    out = "".join(f"\n\n{names.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)
    return out + HH_ASSISTANT


def _messages(value: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of messages", field=name)
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError("expected a message {'role': str, 'content': str}", field=f"{name}[{i}]")
    return value


def _chosen_rejected(row: dict, opt: LoadOptions) -> list[Item]:
    """Transcripts: prompt = shared text up to the last ``"\\n\\nAssistant:"`` (or given)."""
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    meta: dict[str, Any] = dict(row.get("meta") or {}) if isinstance(row.get("meta"), dict) else {}
    if isinstance(chosen, list) or isinstance(rejected, list):
        render = opt.render_chat or render_messages
        chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if prompt is None:
            last = max((i for i, m in enumerate(chosen) if m["role"] == "assistant"), default=None)
            if last is None:
                raise DataError("no assistant turn", field="chosen")
            prompt, chosen = chosen[:last], chosen[last:]
            if rejected[:last] != prompt:
                raise DataError("does not share the prompt turns of 'chosen'", field="rejected")
            rejected = rejected[last:]
        prompt = _messages(prompt, "prompt")
        meta["prompt_messages"] = prompt
        bad = [k for k, v in (("chosen", chosen), ("rejected", rejected))
               if len(v) != 1 or v[0]["role"] != "assistant"]
        if bad:
            raise DataError("expected exactly one assistant message after the prompt", field=bad[0])
        return [PreferencePair(render(prompt), chosen[0]["content"], rejected[0]["content"],
                               margin=row.get("margin"), meta=meta)]
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    if prompt is None:
        common = os.path.commonprefix([chosen, rejected])
        at = common.rfind(HH_ASSISTANT)
        if at < 0:
            raise DataError(f"chosen and rejected share no {HH_ASSISTANT!r} turn to split the prompt at",
                            field="chosen")
        prompt = common[: at + len(HH_ASSISTANT)]
        chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    elif not isinstance(prompt, str):
        raise DataError(f"expected a string, got {type(prompt).__name__}", field="prompt")
    return [PreferencePair(prompt, chosen, rejected, margin=row.get("margin"), meta=meta)]


def _own(cls, row: dict) -> list[Item]:
    try:
        return [cls.from_dict(row)]
    except TypeError as e:  # a required field is missing
        raise DataError(f"not a {cls.__name__} row: {e}") from None


def _processbench(row: dict, opt: LoadOptions) -> list[Item]:
    """ProcessBench: ``label`` = index of the first wrong step, -1 when all steps are right.

    Steps after the first error are labeled 0 (the solution is on a wrong path, as in
    Math-Shepherd), so :attr:`StepSample.first_error` equals ``label`` exactly.
    """
    problem = _text(row, "problem")
    steps = _steps(row.get("steps"), "steps")
    first = _get(row, "label", int)
    if not -1 <= first < len(steps):
        raise DataError(f"first-error index {first} out of range for {len(steps)} steps", field="label")
    labels = [1.0] * len(steps) if first == -1 else [1.0] * first + [0.0] * (len(steps) - first)
    meta = {k: row[k] for k in ("id", "generator", "final_answer_correct") if k in row}
    return [StepSample(problem, steps, labels, meta=meta)]


def _step_sample(row: dict, opt: LoadOptions) -> list[Item]:
    return _own(StepSample, row)


def _step_pair(row: dict, opt: LoadOptions) -> list[Item]:
    return _own(StepPair, row)


@dataclass(frozen=True)
class Format:
    """A public format: ``detect(first_row) -> bool`` and ``convert(row, options) -> items``."""

    name: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict, LoadOptions], list[Item]]
    keys: str


def _has(*keys: str) -> Callable[[dict], bool]:
    return lambda row: all(k in row for k in keys)


# order matters: the first detector that accepts the first row wins
FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("step_pair", _has("prompt", "prefix_steps", "chosen", "rejected"), _step_pair,
           "prompt, prefix_steps, chosen, rejected"),
    Format("step_sample", _has("prompt", "steps"), _step_sample, "prompt, steps[, labels]"),
    Format("prm800k", lambda r: isinstance(r.get("label"), dict) and "question" in r, _prm800k,
           "question{problem}, label{steps}"),
    Format("math_shepherd", lambda r: _has("input", "label")(r) and "value" not in r
           and isinstance(r.get("input"), str) and SHEPHERD_TAG in r["input"], _math_shepherd,
           "input (with ки), label"),
    Format("input_value_label", _has("input", "value", "label"), _input_value_label, "input, value, label"),
    Format("processbench", lambda r: _has("problem", "steps", "label")(r) and not isinstance(r["label"], dict),
           _processbench, "problem, steps, label (first error index or -1)"),
    Format("trl_stepwise", _has("prompt", "completions", "labels"), _trl_stepwise,
           "prompt, completions, labels"),
    Format("rlhflow", lambda r: isinstance(r.get("conversations"), list)
           or (isinstance(r.get("messages"), list) and len(r) == 1), _rlhflow, "conversations"),
    Format("step_dpo", _has("prompt", "initial_reason_steps", "chosen", "rejected"), _step_dpo,
           "prompt, initial_reason_steps, chosen, rejected"),
    Format("chosen_rejected", _has("chosen", "rejected"), _chosen_rejected, "[prompt,] chosen, rejected"),
]}


def detect_format(row: Any, source: str | None = None, row_index: int | None = None) -> str:
    """Name of the format of ``row``; the error lists every format and the keys seen.

    >>> detect_format({"prompt": "Q", "completions": ["a"], "labels": [True]})
    'trl_stepwise'
    """
    if isinstance(row, dict):
        for fmt in FORMATS.values():
            if fmt.detect(row):
                return fmt.name
        seen = sorted(row)
    else:
        seen = f"a {type(row).__name__}, not an object"
    known = "; ".join(f"{f.name} ({f.keys})" for f in FORMATS.values())
    raise DataError(f"cannot detect the data format from keys {seen}; known formats: {known}. "
                    "Pass format=... to choose one", source=source, row=row_index)


# -- reading rows ----------------------------------------------------------------------------------
PAIR_FORMATS = ("step_pair", "step_dpo")


def parse_pair(row: Any, step_format: StepFormat | None = None) -> StepPair:
    """One step pair from a row of either pair format (:data:`PAIR_FORMATS`), by the converter
    :func:`load_samples` uses for that format: one parser per format, whatever the route
    (``stepdpo train``, :func:`stepdpo.pairs.load_pairs`, ``StepwiseDPOTrainer(train_dataset=rows)``).

    >>> parse_pair({"prompt": "Q", "initial_reason_steps": "a\\nStep 2:", "chosen": " b", "rejected": " c"}).chosen
    'Step 2: b'
    """
    if not isinstance(row, dict):
        raise DataError(f"expected an object per row, got a {type(row).__name__}")
    name = next((n for n in PAIR_FORMATS if FORMATS[n].detect(row)), None)
    if name is None:
        keys = " or ".join(f"({FORMATS[n].keys})" for n in PAIR_FORMATS)
        raise DataError(f"not a step pair: expected the keys {keys}; got {sorted(row)}")
    return FORMATS[name].convert(row, LoadOptions(step_format=step_format or StepFormat()))[0]


class RejectsWriter:
    """Rows skipped as invalid, written to ``path`` as JSONL ``{source, row, field, error, data}``
    (the file is created at the first rejected row; ``path=None`` writes nothing)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = path
        self._file = None

    def __call__(self, err: DataError, row: Any) -> None:
        if self.path is None:
            return
        if self._file is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")
        data = None if isinstance(row, DataError) else row
        self._file.write(json.dumps({"source": err.source, "row": err.row, "field": err.field, "error": str(err),
                                     "data": data}, default=str, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RejectsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _jsonl_rows(data: bytes, source: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) per non-blank line; bad lines yield a DataError as the row."""
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, DataError(f"not valid UTF-8 (byte {e.start} of the line)", source=source, row=n)
            continue
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            yield n, DataError(f"invalid JSON: {e.msg} at column {e.colno}", source=source, row=n)


def _read_bytes(path: Path) -> bytes:
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as e:
            raise DataError(f"not a readable gzip file ({e})", source=str(path)) from None
    return path.read_bytes()


def iter_file_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(row number, row)`` from one file; an unparsable row is yielded as a DataError.

    ``.json`` holds a list of rows or ``{"data": [...]}``; a ``.json`` file that is really
    JSON Lines is read as such. File-level problems (empty, not UTF-8, not a list) raise.
    """
    path = Path(path)
    source = str(path)
    kind = _suffix(path)
    if kind is None:
        raise DataError(f"unsupported file type; expected one of {', '.join(SUFFIXES)}", source=source)
    if kind == ".parquet":
        yield from enumerate(_parquet_rows(path))
        return
    data = _read_bytes(path)
    if not data.strip():
        raise DataError("file is empty", source=source)
    if kind.startswith(".jsonl"):
        yield from _jsonl_rows(data, source)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 at line {line} (byte {e.start})", source=source) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines in a .json file
            yield from _jsonl_rows(data, source)
            return
        raise DataError(f"invalid JSON: {e.msg} at line {e.lineno}, column {e.colno}", source=source) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f"expected a JSON list of rows or {{'data': [...]}}, got a {type(obj).__name__}",
                        source=source)
    if not obj:
        raise DataError("holds no rows", source=source)
    yield from enumerate(obj)


def _parquet_rows(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise ImportError("reading parquet needs pyarrow (pip install pyarrow or datasets)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"not a readable parquet file ({type(e).__name__}: {e})", source=str(path)) from None
    if not rows:
        raise DataError("holds no rows", source=str(path))
    return rows


def _hub_rows(name: str, split: str, config: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise ImportError(f"{name!r} is not a local path, and loading hub datasets needs `datasets`") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub client raises many types (offline, 404, auth)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only cached datasets load)" if offline else ""
        raise DataError(f"{name!r} is not a local file or directory, and loading it as a `datasets` hub "
                        f"dataset (split {split!r}) failed{hint}: {type(e).__name__}: {e}", source=name) from None
    return ds.to_list()  # one Arrow conversion, much faster than iterating rows


def _sources(path_or_name: str | os.PathLike, split: str, config: str | None
             ) -> Iterator[tuple[str, Iterable[tuple[int, Any]]]]:
    path = Path(path_or_name)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) is not None
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"directory holds no {', '.join(SUFFIXES)} files", source=str(path))
        for f in files:
            yield str(f), iter_file_rows(f)
    elif path.is_file():
        yield str(path), iter_file_rows(path)
    elif _suffix(path) is not None or str(path_or_name).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{path} does not exist")
    else:
        name = str(path_or_name)
        yield name, enumerate(_hub_rows(name, split, config))


# -- public API ------------------------------------------------------------------------------------
def convert_rows(rows: Iterable[Any], format: str | None = None, *, source: str = "<rows>",
                 options: LoadOptions | None = None, skip_invalid: bool = False,
                 stats: LoadStats | None = None, on_reject: Callable[[DataError, Any], None] | None = None,
                 ) -> list[Item]:
    """Convert in-memory rows (dicts) of one format; rows are numbered from 0 in errors.

    Same conversion and error rules as :func:`load_samples`; ``on_reject(error, row)`` is
    called for each row skipped with ``skip_invalid=True``.
    """
    return _convert(enumerate(rows), format, source, options or LoadOptions(), skip_invalid,
                    stats if stats is not None else LoadStats(), on_reject)


def _convert(numbered: Iterable[tuple[int, Any]], format: str | None, source: str, opt: LoadOptions,
             skip_invalid: bool, stats: LoadStats, on_reject) -> list[Item]:
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    fmt = FORMATS[format] if format else None
    out: list[Item] = []
    # tqdm shows a bar only on a terminal (disable=None) and only after 2 s (delay)
    for n, row in tqdm(numbered, desc=f"loading {Path(source).name}", unit=" rows", disable=None,
                       delay=2.0, leave=False):
        stats.rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, dict):
                raise DataError(f"expected an object per row, got a {type(row).__name__}")
            if fmt is None:
                fmt = FORMATS[detect_format(row, source, n)]
                stats.formats[source] = fmt.name
            items = fmt.convert(row, opt)
        except DataError as e:
            err = e.at(source=source, row=n)
            if not skip_invalid:
                raise err from None
            stats.rejected += 1
            if len(stats.errors) < 20:
                stats.errors.append(str(err))
            logger.warning("skipping invalid row: %s", err)
            if on_reject is not None:
                on_reject(err, row)
            continue
        for item in items:  # rows that already name a source (saved by save_samples) keep it
            if "source" not in item.meta:
                item.meta.update(source=source, row=n, format=fmt.name)
        out.extend(items)
    if fmt is not None:
        stats.formats.setdefault(source, fmt.name)
    return out


def load_samples_with_stats(path_or_name: str | os.PathLike, format: str | None = None, *,
                            neutral: str = "positive", step_format: StepFormat | None = None,
                            render_chat: Callable[[list[dict]], str] | None = None,
                            skip_invalid: bool = False, rejects_path: str | os.PathLike | None = None,
                            split: str = "train", config: str | None = None) -> tuple[list[Item], LoadStats]:
    """Like :func:`load_samples`, also returning a :class:`LoadStats` with counts."""
    opt = LoadOptions(neutral=neutral, step_format=step_format or StepFormat(), render_chat=render_chat)
    stats = LoadStats(rejects_path=str(rejects_path) if rejects_path else None)
    out: list[Item] = []
    with RejectsWriter(rejects_path) as on_reject:
        for source, numbered in _sources(path_or_name, split, config):
            out.extend(_convert(numbered, format, source, opt, skip_invalid, stats, on_reject))
    stats.items = len(out)
    if stats.rejected:
        logger.warning("%s: skipped %d of %d rows as invalid%s", path_or_name, stats.rejected, stats.rows,
                       f" (written to {rejects_path})" if rejects_path else "")
    if not out:
        raise DataError(f"no valid rows ({stats.rejected} of {stats.rows} rejected"
                        + (f"; see {rejects_path})" if rejects_path else ")"), source=str(path_or_name))
    return out, stats


def load_samples(path_or_name: str | os.PathLike, format: str | None = None, **kwargs) -> list[Item]:
    """Load a public-format data set as canonical items.

    Args:
        path_or_name: a ``.json``/``.jsonl``/``.jsonl.gz``/``.json.gz``/``.parquet`` file, a
            directory of them (read recursively in sorted order; hidden files and folders are
            skipped), or a ``datasets`` hub name.
        format: one of :data:`FORMATS`; None detects it from each file's first row.
        neutral: PRM800K rating-0 steps: ``"positive"`` (1.0, default), ``"negative"``, ``"half"``.
        step_format: splits Step-DPO ``initial_reason_steps`` (default separator ``"\\n"``).
        render_chat: renders chat-message prompts (default :func:`render_messages`).
        skip_invalid: skip bad rows instead of raising; they are counted, logged and, with
            ``rejects_path``, written there as JSONL ``{source, row, field, error, data}``.
        split, config: the split and configuration of a hub dataset.

    Returns a list of StepSample, StepPair or PreferencePair; each item's ``meta`` holds its
    ``source``, ``row`` and ``format`` (rows whose ``meta`` already names a ``source``, e.g.
    written by :func:`save_samples`, keep their own). Use :func:`load_samples_with_stats` for counts.

    >>> import json, tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "x.jsonl")
    >>> _ = open(p, "w").write(json.dumps({"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]}))
    >>> load_samples(p)[0].labels
    [1.0, 0.0]
    """
    return load_samples_with_stats(path_or_name, format, **kwargs)[0]


def save_samples(path: str | os.PathLike, items: Sequence[Item]) -> Path:
    """Write items as JSONL (``.gz`` suffix: gzipped) atomically; :func:`load_samples` reads them back."""
    from reward_models.safety import atomic_file

    path = Path(path)
    with atomic_file(path, "wb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="wb") if path.name.endswith(".gz") else raw
        for item in items:
            if not isinstance(item, (StepSample, StepPair, PreferencePair)):
                raise TypeError(f"cannot save a {type(item).__name__}")
            f.write((json.dumps(item.to_dict(), ensure_ascii=False, default=str) + "\n").encode("utf-8"))
        if f is not raw:
            f.close()
    return path


def to_trl_stepwise(samples: Sequence[StepSample], threshold: float = 0.5):
    """A ``datasets.Dataset`` in TRL stepwise-supervision format (labels: ``label >= threshold``)."""
    import datasets

    prompts, completions, labels = [], [], []
    for i, s in enumerate(samples):
        if not isinstance(s, StepSample):
            raise TypeError(f"item {i} is a {type(s).__name__}, not a StepSample")
        if s.labels is None:
            raise DataError("sample has no step labels", row=i, field="labels")
        prompts.append(s.prompt)
        completions.append(list(s.steps))
        labels.append([v >= threshold for v in s.labels])
    return datasets.Dataset.from_dict({"prompt": prompts, "completions": completions, "labels": labels})


__all__ = ["FORMATS", "PAIR_FORMATS", "Format", "Item", "LoadOptions", "LoadStats", "RejectsWriter", "convert_rows",
           "detect_format", "iter_file_rows", "load_samples", "load_samples_with_stats", "parse_pair",
           "render_messages", "save_samples", "to_label", "to_trl_stepwise"]
