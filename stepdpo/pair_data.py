"""Step pairs as the trainer's dataset: validation and per-pair weights (:func:`pairs_to_rows`,
:func:`margin_weights`), piecewise tokenization exactly as the sampler generates
(:func:`tokenize_step_pair`, :func:`tokenize_solution_pair`), the kind of a dataset
(:func:`dataset_kind`) and the collator that also passes each pair's weight.

>>> from reward_models.testing import tiny_tokenizer
>>> from reward_models.steps import StepFormat
>>> ids = tokenize_step_pair(tiny_tokenizer(), StepFormat(), "Q: 1+2\\n", [], "1+2=3", "1+2=4", is_final=False)
>>> sorted(ids), ids["chosen_ids"][-1] == tiny_tokenizer()("\\n")["input_ids"][-1]
(['chosen_ids', 'prompt_ids', 'rejected_ids'], True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Features, List, Value
from trl.trainer.dpo_trainer import DataCollatorForPreference

from reward_models.steps import StepFormat
from reward_models.types import DataError, StepPair
from stepdpo.pairs import pair_from_row
from stepdpo.sampling import step_piece_ids

PAIR_FEATURES = Features({
    "prompt": Value("string"), "prefix_steps": List(Value("string")), "chosen": Value("string"),
    "rejected": Value("string"), "is_final": Value("bool"), "margin": Value("float32"),
    "pair_weight": Value("float32"),
})
TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")




def margin_weights(margins: Sequence[float], mode: str = "none", scale: float = 1.0) -> list[float]:
    """Per-pair loss weights from reward margins, normalized to mean 1.

    ``"none"``: all 1. ``"margin"``: proportional to ``max(margin, 0)``. ``"sigmoid"``:
    proportional to ``sigmoid(scale * margin)``. All-zero margins give all-1 weights.

    >>> margin_weights([1.0, 3.0], "margin")
    [0.5, 1.5]
    >>> [round(w, 3) for w in margin_weights([0.0, 2.0], "sigmoid")]
    [0.724, 1.276]
    """
    if mode == "none" or not margins:
        return [1.0] * len(margins)
    if mode == "margin":
        raw = [max(float(m), 0.0) for m in margins]
    elif mode == "sigmoid":
        raw = [1.0 / (1.0 + math.exp(-scale * float(m))) for m in margins]
    else:
        raise ValueError(f"unknown margin weighting {mode!r}; expected 'none', 'margin' or 'sigmoid'")
    mean = sum(raw) / len(raw)
    if mean <= 0:
        return [1.0] * len(margins)
    return [r / mean for r in raw]


def tokenize_step_pair(tokenizer, step_format: StepFormat, prompt: str, prefix_steps: Sequence[str], chosen: str,
                       rejected: str, is_final: bool = False) -> dict[str, list[int]]:
    """Ids of one step pair, built piecewise.

    ``prompt_ids`` = ``step_format.tokenize(tok, prompt, prefix, complete=False).input_ids``
    (what the sampler generates from); ``chosen_ids``/``rejected_ids`` = the ids of the step's
    piece (``step + tag + separator``, or the final-step layout when ``is_final``), plus EOS only
    when ``is_final``.
    """
    out: dict[str, list[int]] = {}
    for name, step in (("chosen_ids", chosen), ("rejected_ids", rejected)):
        out["prompt_ids"], out[name] = step_piece_ids(tokenizer, step_format, prompt, prefix_steps, step, is_final)
    return out


def _end_with_eos(tokenizer, ids: list[int], what: str) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer has no EOS token to end {what} with")
    return ids + [tokenizer.eos_token_id]


def tokenize_solution_pair(tokenizer, step_format: StepFormat, prompt: str, chosen_steps: Sequence[str],
                           rejected_steps: Sequence[str], chosen_finished: bool = True,
                           rejected_finished: bool = True) -> dict[str, list[int]]:
    """Ids of one whole-solution (outcome-level) pair, built piecewise like :func:`tokenize_step_pair`.

    ``prompt_ids`` = the prompt's ids; ``chosen_ids``/``rejected_ids`` = every step's piece of
    the solution (the complete layout of the step format), plus EOS when the policy ended that
    solution (``*_finished``), exactly the ids the sampler generated.

    >>> from reward_models.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> ids = tokenize_solution_pair(tok, StepFormat(), "Q: 1+2\\n", ["1+2=3", "Answer: 3"], ["1+2=4"], True, False)
    >>> ids["chosen_ids"][-1] == tok.eos_token_id, ids["rejected_ids"][-1] == tok.eos_token_id
    (True, False)
    """
    out = {"prompt_ids": step_format.tokenize(tokenizer, prompt, [], complete=False).input_ids}
    for name, steps, finished in (("chosen_ids", chosen_steps, chosen_finished),
                                  ("rejected_ids", rejected_steps, rejected_finished)):
        if not steps:
            raise DataError("a solution of an outcome pair has no steps", field=name.replace("_ids", "_steps"))
        enc = step_format.tokenize(tokenizer, prompt, list(steps), complete=bool(finished))
        assert enc.input_ids[: enc.prompt_len] == out["prompt_ids"], "piecewise tokenization must keep the prompt"
        ids = enc.input_ids[enc.prompt_len:]
        out[name] = _end_with_eos(tokenizer, ids, "a finished solution") if finished else ids
    return out


@dataclass
class StepPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, also passing each pair's ``pair_weight`` (shape ``(B,)``)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "pair_weight" in examples[0]:
            out["pair_weight"] = torch.tensor([float(e["pair_weight"]) for e in examples], dtype=torch.float32)
        return out


def pairs_to_rows(pairs: Sequence[StepPair | dict], margin_weighting: str = "none", scale: float = 1.0,
                  source: str = "train_dataset", step_format: StepFormat | None = None) -> list[dict[str, Any]]:
    """Validated rows (``PAIR_FEATURES`` columns) from StepPairs or dicts of either pair format
    (Step-DPO rows are split into steps with ``step_format``)."""
    checked = []
    for n, p in enumerate(pairs):
        try:
            if isinstance(p, dict):
                p = pair_from_row({k: v for k, v in p.items() if k != "pair_weight"}, step_format)
            elif not isinstance(p, StepPair):
                raise DataError(f"expected a StepPair or a dict, got {type(p).__name__}")
        except DataError as e:
            raise e.at(source=source, row=n) from None
        except TypeError as e:  # a dict missing required fields
            raise DataError(str(e), source=source, row=n) from None
        checked.append(p)
    weights = margin_weights([p.margin for p in checked], margin_weighting, scale)
    return [{"prompt": p.prompt, "prefix_steps": list(p.prefix_steps), "chosen": p.chosen, "rejected": p.rejected,
             "is_final": p.is_final, "margin": float(p.margin), "pair_weight": float(p.weight) * w}
            for p, w in zip(checked, weights)]


def dataset_kind(dataset) -> str:
    """``"tokenized"``, ``"solutions"`` (outcome pairs), ``"pairs"`` (step pairs of either format),
    ``"prompts"`` (pairs are to be built) or ``"trl"`` (any other TRL preference data)."""
    cols = set(getattr(dataset, "column_names", None) or next(iter(dataset)).keys())
    if set(TOKENIZED_COLUMNS) <= cols:
        return "tokenized"
    if "chosen_steps" in cols:
        return "solutions"
    if "prefix_steps" in cols or "initial_reason_steps" in cols:
        return "pairs"
    if "prompt" in cols and "chosen" not in cols:
        return "prompts"
    return "trl"


__all__ = ["PAIR_FEATURES", "TOKENIZED_COLUMNS", "StepPreferenceCollator", "dataset_kind", "margin_weights",
           "pairs_to_rows", "tokenize_solution_pair", "tokenize_step_pair"]
