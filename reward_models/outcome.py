"""Outcome reward models: one score per whole solution, batched.

Two backends (``backend`` in ``reward_config.json``):

* ``head`` - a per-token logit head (``AutoModelForTokenClassification`` with
  ``num_labels=1``), trained with BCE on every completion token (seed 000). A solution's score
  is read at its last token (``reduce="last"``, seed 001 and "Let's Verify") or is the mean
  per-token probability over the completion (``reduce="mean"``, seed 000).
* ``verification`` - a Yes/No question about the whole solution (the reference API): reward
  ``log p(Yes) - log p(No)``; questions are left-padded and batched.

:meth:`OutcomeRewardModel.score_steps` scores every step *prefix* as a partial solution; the
head backend reads all prefixes of all solutions from one forward pass (causal model).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from reward_models import hf_utils
from reward_models.base import (
    CONFIG_NAME,
    ConfiguredRewardModel,
    register_reward_model,
    write_reward_config,
)
from reward_models.process import build_settings, fill_template, settings_from_dir, yes_no_logodds
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat, adds_bos
from reward_models.types import DataError

logger = logging.getLogger(__name__)

OUTCOME_BACKENDS = ("head", "verification")
DEFAULT_SOLUTION_TEMPLATE = "Problem: {problem}\n\nSolution: {solution}\nIs this solution correct? Yes or No:"
# the reference API's question, asked when there is no problem (get_reward_for_text)
TEXT_ONLY_SOLUTION_TEMPLATE = "Is this solution correct? Yes or No: {solution}"


@dataclass
class OutcomeSettings:
    """How an :class:`OutcomeRewardModel` scores (saved in ``reward_config.json``)."""

    backend: str = field(default="head", metadata={"help": "head | verification"})
    reduce: str = field(default="last", metadata={"help": "head: score at the last token (last) or the mean "
                                                            "per-token probability over the completion (mean)"})
    output: str | None = field(default=None, metadata={"help": "prob | logodds (default: prob for head, logodds "
                                                                 "for verification)"})
    step_format: StepFormat = field(default=DEFAULT_STEP_FORMAT, metadata={"help": "how prefixes are laid out"})
    prompt_template: str = field(default=DEFAULT_SOLUTION_TEMPLATE,
                                 metadata={"help": "verification: fields {problem} and {solution}"})
    yes_token: str = field(default=" Yes", metadata={"help": "verification: answer token read as 'correct'"})
    no_token: str = field(default=" No", metadata={"help": "verification: answer token read as 'wrong'"})
    max_length: int | None = field(default=None, metadata={"help": "longest sequence accepted; longer raises"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass"})

    def __post_init__(self) -> None:
        if isinstance(self.step_format, dict):
            self.step_format = StepFormat.from_dict(self.step_format)
        if self.backend not in OUTCOME_BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {OUTCOME_BACKENDS}")
        if self.reduce not in ("last", "mean"):
            raise ValueError(f"unknown reduce {self.reduce!r}; expected 'last' or 'mean'")
        if self.output is None:
            self.output = "logodds" if self.backend == "verification" else "prob"
        if self.output not in ("prob", "logodds"):
            raise ValueError(f"unknown output {self.output!r}; expected 'prob' or 'logodds'")
        if self.backend == "verification" and "{solution}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the field {solution}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {self.max_length!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["step_format"] = self.step_format.to_dict()
        return out


def reduce_token_logits(logits: torch.Tensor, start: int, end: int, reduce: str) -> torch.Tensor:
    """Log-odds of one (prefix of a) solution from per-token logits ``(L,)``: the logit at
    ``end - 1`` (``last``) or the log-odds of the mean probability over ``[start, end)`` (``mean``).

    >>> round(reduce_token_logits(torch.tensor([9.0, 0.0, 0.0]), 1, 3, "mean").item(), 6)
    0.0
    """
    if end <= start:
        raise ValueError("a completion needs at least one token")
    if reduce == "last":
        return logits[end - 1].double()
    p = torch.sigmoid(logits[start:end].double()).mean().clamp(1e-12, 1 - 1e-12)
    return torch.log(p) - torch.log1p(-p)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Prompt ids exactly as :meth:`StepFormat.tokenize` builds them (BOS alone for an empty prompt)."""
    if prompt:
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if getattr(tokenizer, "bos_token_id", None) is not None and adds_bos(tokenizer):
        return [tokenizer.bos_token_id]
    return []


@register_reward_model("outcome")
class OutcomeRewardModel(ConfiguredRewardModel):
    """An outcome reward model (ORM) over a transformers model; see the module docstring.

    Args:
        model_name_or_path: a saved directory, a plain causal-LM directory (verification
            backend) or a ``...ForTokenClassification`` directory with one label (head backend).
        device: default CUDA when available, else CPU.
        tokenizer, dtype/torch_dtype, trust_remote_code, model_kwargs: as for ProcessRewardModel.
        **settings: any :class:`OutcomeSettings` field.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str | None = None, *, tokenizer=None,
                 dtype=None, torch_dtype=None, trust_remote_code: bool = False,
                 model_kwargs: dict[str, Any] | None = None, **settings: Any):
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

        path = Path(model_name_or_path)
        default = "head" if any(a.endswith("ForTokenClassification") for a in hf_utils.architectures(path)) \
            else "verification"
        base = settings_from_dir(path, "outcome", default) if path.is_dir() else {"backend": "verification"}
        if base.pop("num_labels", 1) != 1:
            raise DataError("an outcome head has num_labels=1", source=str(path / CONFIG_NAME), field="num_labels")
        s = build_settings(OutcomeSettings, base, settings, source=str(path / CONFIG_NAME))
        auto = AutoModelForTokenClassification if s.backend == "head" else AutoModelForCausalLM
        self._load(auto, model_name_or_path, s, device=device, dtype=dtype or torch_dtype,
                   trust_remote_code=trust_remote_code, model_kwargs=model_kwargs, tokenizer=tokenizer)

    @classmethod
    def from_model(cls, model, tokenizer, backend: str = "head", step_format: StepFormat | None = None,
                   **settings: Any) -> OutcomeRewardModel:
        """Wrap an in-memory model (not copied) and its tokenizer."""
        s = OutcomeSettings(backend=backend, step_format=step_format or DEFAULT_STEP_FORMAT, **settings)
        obj = cls.__new__(cls)
        obj._setup(model, tokenizer, s, where=type(model).__name__)
        obj.name_or_path = getattr(model, "name_or_path", None)
        return obj

    def _setup(self, model, tokenizer, settings: OutcomeSettings, where: str) -> None:
        hf_utils.check_tokenizer(model, tokenizer, where)
        if settings.backend == "head" and int(getattr(model.config, "num_labels", 1)) != 1:
            raise ValueError(f"{where}: an outcome head needs num_labels=1 (one logit per token), "
                             f"got {model.config.num_labels}")
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.device = hf_utils.model_device(model)
        self.pad_token_id = hf_utils.pad_id(tokenizer)
        self.max_length = hf_utils.max_positions(model, settings.max_length)
        self.candidate_ids = []
        if settings.backend == "verification":
            self.candidate_ids = [hf_utils.token_id(tokenizer, settings.yes_token, "yes_token"),
                                  hf_utils.token_id(tokenizer, settings.no_token, "no_token")]
            if self.candidate_ids[0] == self.candidate_ids[1]:
                raise ValueError(f"{where}: yes_token and no_token map to the same id {self.candidate_ids[0]}")

    @property
    def backend(self) -> str:
        return self.settings.backend

    @property
    def evaluation_prompt(self) -> str:  # reference-API name
        return self.settings.prompt_template

    def question_template(self, problem: str) -> str:
        """The verification question: ``prompt_template``, except that with no problem the default
        template gives way to the reference API's :data:`TEXT_ONLY_SOLUTION_TEMPLATE`."""
        t = self.settings.prompt_template
        return TEXT_ONLY_SOLUTION_TEMPLATE if not problem and t == DEFAULT_SOLUTION_TEMPLATE else t

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, prompts, completions) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        for i, c in enumerate(completions):
            if not isinstance(c, str) or not c.strip():
                raise DataError("a completion must be a non-empty string", row=i, field="completion")
        if self.settings.backend == "verification":
            queries = [fill_template(self.question_template(p), problem=p, solution=c)
                       for p, c in zip(prompts, completions)]
            return self._verify(queries, list(range(len(queries))))
        seqs, ends = [], []
        for p, c in zip(prompts, completions):
            p_ids = prompt_ids(self.tokenizer, p)
            c_ids = list(self.tokenizer(c, add_special_tokens=False)["input_ids"])
            seqs.append(p_ids + c_ids)
            ends.append([(len(p_ids), len(p_ids) + len(c_ids))])
        return [row[0] for row in self._head(seqs, ends)]

    def score_steps(self, prompts, steps) -> list[list[float]]:
        """Score of each step prefix ``steps[:j+1]`` as a partial solution."""
        prompts, steps = list(prompts), [list(s) for s in steps]
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")
        fmt = self.settings.step_format
        if self.settings.backend == "verification":
            queries, owner = [], []
            for i, (p, st) in enumerate(zip(prompts, steps)):
                for j in range(len(st)):
                    try:
                        sol = fmt.join(st[: j + 1], complete=j == len(st) - 1)
                    except DataError as e:
                        raise e.at(row=i) from None
                    queries.append(fill_template(self.question_template(p), problem=p, solution=sol))
                    owner.append(i)
            flat = self._verify(queries, owner)
            out, k = [], 0
            for st in steps:
                out.append(flat[k:k + len(st)])
                k += len(st)
            return out
        seqs, ends = [], []
        for t in fmt.tokenize_many(self.tokenizer, prompts, steps, rows=range(len(prompts))):
            seqs.append(t.input_ids)
            ends.append([(t.prompt_len, e) for _s, e in t.spans])
        return self._head(seqs, ends)

    def _head(self, seqs: list[list[int]], ranges: list[list[tuple[int, int]]]) -> list[list[float]]:
        """One right-padded forward per chunk; each ``(start, end)`` range reduced to one score."""
        hf_utils.check_lengths([len(x) for x in seqs], self.max_length)
        out: list[list[float]] = [[] for _ in seqs]
        todo = [i for i, r in enumerate(ranges) if r]
        with hf_utils.scoring_mode(self.model):
            for idx in hf_utils.batches(len(todo), self.settings.batch_size):
                rows = [todo[k] for k in idx]
                ids, mask = hf_utils.pad_right([seqs[i] for i in rows], self.pad_token_id)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logits = logits[..., 0].float().cpu()
                for b, i in enumerate(rows):
                    lo = torch.stack([reduce_token_logits(logits[b], s, e, self.settings.reduce)
                                      for s, e in ranges[i]])
                    out[i] = hf_utils.to_output(lo, self.settings.output)
        return out

    def _verify(self, queries: list[str], owner: list[int]) -> list[float]:
        if not queries:
            return []
        flat = yes_no_logodds(self.model, self.tokenizer, queries, self.candidate_ids, self.pad_token_id,
                              self.settings.batch_size, self.max_length, owner)
        return hf_utils.to_output(flat, self.settings.output)

    def get_reward_for_problem_solution(self, problem: str, solution: str) -> float:
        """The reference API's call. With the default verification template it asks the reference's
        question about ``"Problem: {problem}\n\nSolution: {solution}"``; otherwise ``score``."""
        if self.backend == "verification" and self.settings.prompt_template == DEFAULT_SOLUTION_TEMPLATE:
            return self.score([""], [f"Problem: {problem}\n\nSolution: {solution}"])[0]
        return self.score([problem], [solution])[0]

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        hf_utils.save_hf(self.model, self.tokenizer, path)
        write_reward_config(path, "outcome", **self.settings.to_dict())

    def __repr__(self) -> str:
        return f"OutcomeRewardModel(backend={self.backend!r}, model={getattr(self, 'name_or_path', None)!r})"


__all__ = ["DEFAULT_SOLUTION_TEMPLATE", "OutcomeRewardModel", "OutcomeSettings", "reduce_token_logits"]
