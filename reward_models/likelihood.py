"""Reward models that read a causal LM's token probabilities: no classification head.

A discriminative head trained on a few bits of step labels learns position habits ("later steps are
more often wrong") rather than checking a step; a model trained with next-token prediction already
computes what the next step should say. Two kinds read that directly:

* ``likelihood`` (:class:`LikelihoodRewardModel`) - a step's score is how probable the LM finds the
  step's tokens given the problem and previous steps. ``token_score`` picks the reduction over the
  step's tokens: ``min_prob`` (the least probable token, default), ``min_relative`` (each token's
  probability over the top token's, so a step is not penalised where the LM itself was unsure),
  ``mean_logprob`` (geometric mean probability) or ``sum_logprob`` (the step's probability).
  With ``cumulative=True`` (default) step ``j`` gets the running minimum over steps ``0..j``,
  matching process labels where a step is good only when every step so far is.
  Scores are probabilities in ``(0, 1]``. The LM can be the policy itself (training-free) or a
  verifier LM trained with next-token loss on correct solutions.
* ``implicit`` (:class:`ImplicitRewardModel`) - the implicit process reward of PRIME / "Free Process
  Rewards without Process Labels" (arXiv 2412.01981): a trained LM and its reference; step ``j``'s
  reward is ``beta * sum(log pi(t) - log pi_ref(t))`` over its tokens and, cumulated over steps
  ``0..j`` (``cumulative=True``), ``sigmoid`` of it is the probability that the solution is right so
  far. Trained by :class:`reward_models.implicit_trainer.ImplicitPRMTrainer` with step or outcome labels.

Both take every step of a solution from **one** forward pass (right-padded chunks, similar lengths
together) and save as a directory (``reward_config.json`` + safetensors; the implicit model keeps
its reference in ``reference/``).

>>> from reward_models.testing import tiny_causal_lm, tiny_tokenizer
>>> tok = tiny_tokenizer(); lm = tiny_causal_lm(tok)
>>> rm = LikelihoodRewardModel.from_model(lm, tok)
>>> s = rm.score_steps(["Q: 1+2\\n"], [["1+2=3", "Answer: 3"]])[0]
>>> len(s), all(0 < v <= 1 for v in s), s[1] <= s[0]
(2, True, True)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from reward_models import hf_utils
from reward_models.base import (
    AGGREGATIONS,
    CONFIG_NAME,
    ConfiguredRewardModel,
    register_reward_model,
    saved_settings,
    write_reward_config,
)
from reward_models.process import build_settings
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat, TokenizedSteps

logger = logging.getLogger(__name__)

TOKEN_SCORES = ("min_prob", "min_relative", "mean_logprob", "sum_logprob")
REFERENCE_DIR = "reference"


@dataclass
class LikelihoodSettings:
    """How a :class:`LikelihoodRewardModel` scores (saved in ``reward_config.json``)."""

    step_format: StepFormat = field(default=DEFAULT_STEP_FORMAT, metadata={"help": "how steps are laid out"})
    token_score: str = field(default="min_prob", metadata={"help": "min_prob | min_relative | mean_logprob | "
                                                                   "sum_logprob"})
    include_separator: bool = field(default=True, metadata={"help": "score the separator after each step too (it "
                                                                    "says where the step's last number ends)"})
    cumulative: bool = field(default=True, metadata={"help": "step j scores the running minimum over steps 0..j"})
    batch_size: int = field(default=32, metadata={"help": "solutions per forward pass"})
    max_length: int | None = field(default=None, metadata={"help": "longest sequence accepted; longer raises"})
    aggregation: str = field(default="min", metadata={"help": "how score() reduces step scores"})

    def __post_init__(self) -> None:
        _check_common(self)
        if self.token_score not in TOKEN_SCORES:
            raise ValueError(f"unknown token_score {self.token_score!r}; expected one of {TOKEN_SCORES}")

    def to_dict(self) -> dict[str, Any]:
        return _settings_dict(self)


@dataclass
class ImplicitSettings:
    """How an :class:`ImplicitRewardModel` scores (saved in ``reward_config.json``)."""

    step_format: StepFormat = field(default=DEFAULT_STEP_FORMAT, metadata={"help": "how steps are laid out"})
    beta: float = field(default=0.05, metadata={"help": "scale of the log-likelihood ratio (as trained)"})
    cumulative: bool = field(default=True, metadata={"help": "step j: sum of the ratios over steps 0..j (q_j); "
                                                             "False: step j's own ratio (r_j)"})
    include_separator: bool = field(default=True, metadata={"help": "count the separator after each step too"})
    output: str = field(default="prob", metadata={"help": "prob (sigmoid) | logodds"})
    batch_size: int = field(default=32, metadata={"help": "solutions per forward pass"})
    max_length: int | None = field(default=None, metadata={"help": "longest sequence accepted; longer raises"})
    aggregation: str = field(default="min", metadata={"help": "how score() reduces step scores"})

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.beta, (int, float)) or isinstance(self.beta, bool) or not self.beta > 0:
            raise ValueError(f"beta must be a positive number, got {self.beta!r}")
        if self.output not in ("prob", "logodds"):
            raise ValueError(f"unknown output {self.output!r}; expected 'prob' or 'logodds'")

    def to_dict(self) -> dict[str, Any]:
        return _settings_dict(self)


def _check_common(s) -> None:
    if isinstance(s.step_format, dict):
        s.step_format = StepFormat.from_dict(s.step_format)
    if not isinstance(s.step_format, StepFormat):
        raise ValueError(f"step_format must be a StepFormat or dict, got {type(s.step_format).__name__}")
    if not isinstance(s.batch_size, int) or s.batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {s.batch_size!r}")
    if s.max_length is not None and (not isinstance(s.max_length, int) or s.max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {s.max_length!r}")
    if s.aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {s.aggregation!r}; expected one of {AGGREGATIONS}")


def _settings_dict(s) -> dict[str, Any]:
    out = {f.name: getattr(s, f.name) for f in fields(s)}
    out["step_format"] = s.step_format.to_dict()
    return out


# -- token log-probabilities ----------------------------------------------------------------------
def step_token_spans(tok: TokenizedSteps, step_format: StepFormat, tokenizer, steps: Sequence[str],
                     include_separator: bool) -> list[tuple[int, int]]:
    """Per step, the token positions whose probabilities count: its span, without the separator's
    tokens when ``include_separator`` is False; position 0 (nothing predicts it) never counts."""
    spans = []
    for j, (s, e) in enumerate(tok.spans):
        if not include_separator:
            sep = len(tokenizer(step_format.piece(steps[j], last=j == len(steps) - 1)[len(steps[j]):],
                                add_special_tokens=False)["input_ids"]) if step_format.separator else 0
            e = max(s + 1, e - sep)
        spans.append((max(s, 1), e))
    return spans


def token_logprobs(model, sequences: Sequence[Sequence[int]], pad_token_id: int, batch_size: int,
                   with_top: bool = False) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """For each id sequence, ``log p(ids[t] | ids[:t])`` at every position (0 at position 0) and,
    with ``with_top``, the top token's log-probability there. Right-padded chunks of similar length."""
    out: list[Any] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    dev = hf_utils.model_device(model)
    with hf_utils.scoring_mode(model):
        for chunk in hf_utils.chunks(len(order), batch_size):
            idx = [order[c] for c in chunk]
            ids, mask = hf_utils.pad_right([sequences[i] for i in idx], pad_token_id)
            ids, mask = ids.to(dev), mask.to(dev)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            picked = torch.zeros(ids.shape, dtype=torch.float64, device=dev)
            picked[:, 1:] = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].double()
            top = None
            if with_top:
                top = torch.zeros(ids.shape, dtype=torch.float64, device=dev)
                top[:, 1:] = logp[:, :-1].max(-1).values.double()
            for b, i in enumerate(idx):
                n = len(sequences[i])
                out[i] = (picked[b, :n].cpu(), top[b, :n].cpu() if top is not None else None)
    return out


class _TokenScorer(ConfiguredRewardModel):
    """Shared plumbing: settings, tokenizing solutions and checking lengths."""

    settings_cls: type = LikelihoodSettings

    def _setup(self, model, tokenizer, settings, where: str) -> None:
        hf_utils.check_tokenizer(model, tokenizer, where)
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.pad_token_id = hf_utils.pad_id(tokenizer)
        self.max_length = hf_utils.max_positions(model, settings.max_length)



    def _tokenize(self, prompts, steps) -> tuple[list[TokenizedSteps], list[int]]:
        prompts, steps = list(prompts), [list(s) for s in steps]
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")
        todo = [i for i, s in enumerate(steps) if s]
        toks = self.step_format.tokenize_many(self.tokenizer, [prompts[i] for i in todo], [steps[i] for i in todo],
                                              rows=todo)
        hf_utils.check_lengths([len(t) for t in toks], self.max_length, index=todo)
        return toks, todo

    def _spans(self, tok, steps):
        return step_token_spans(tok, self.step_format, self.tokenizer, steps, self.settings.include_separator)


@register_reward_model("likelihood")
class LikelihoodRewardModel(_TokenScorer):
    """Scores steps by a causal LM's probability of their tokens (see the module docstring).

    Args:
        model_name_or_path: a saved ``likelihood`` directory or a plain causal-LM directory.
        device, dtype / torch_dtype, trust_remote_code, model_kwargs, tokenizer: as for
            :class:`~reward_models.process.ProcessRewardModel`.
        **settings: any :class:`LikelihoodSettings` field.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str | None = None, *, tokenizer=None,
                 dtype=None, torch_dtype=None, trust_remote_code: bool = False,
                 model_kwargs: dict[str, Any] | None = None, **settings: Any):
        from transformers import AutoModelForCausalLM

        path = Path(model_name_or_path)
        base = _saved_settings(path, "likelihood")
        s = build_settings(LikelihoodSettings, base, settings, source=str(path / CONFIG_NAME))
        self._load(AutoModelForCausalLM, model_name_or_path, s, device=device, dtype=dtype or torch_dtype,
                   trust_remote_code=trust_remote_code, model_kwargs=model_kwargs, tokenizer=tokenizer)

    @classmethod
    def from_model(cls, model, tokenizer, **settings: Any) -> LikelihoodRewardModel:
        """Wrap an in-memory causal LM (not copied: a live policy stays shared)."""
        obj = cls.__new__(cls)
        obj._setup(model, tokenizer, LikelihoodSettings(**settings), where=type(model).__name__)
        obj.name_or_path = getattr(model, "name_or_path", None)
        return obj

    def score_steps(self, prompts, steps):
        steps = [list(s) for s in steps]
        out: list[list[float]] = [[] for _ in steps]
        toks, todo = self._tokenize(prompts, steps)
        if not toks:
            return out
        s = self.settings
        rel = s.token_score == "min_relative"
        lps = token_logprobs(self.model, [t.input_ids for t in toks], self.pad_token_id, s.batch_size, with_top=rel)
        for i, tok, (lp, top) in zip(todo, toks, lps):
            row, running = [], 0.0
            for a, b in self._spans(tok, steps[i]):
                v = lp[a:b]
                if v.numel() == 0:
                    val = 0.0
                elif s.token_score == "min_prob":
                    val = float(v.min())
                elif rel:
                    val = float((v - top[a:b]).min())
                elif s.token_score == "mean_logprob":
                    val = float(v.mean())
                else:
                    val = float(v.sum())
                running = min(running, val) if s.cumulative else val
                row.append(math.exp(running))
            out[i] = row
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Weights (safetensors), tokenizer and ``reward_config.json``."""
        hf_utils.save_hf(self.model, self.tokenizer, path)
        write_reward_config(path, "likelihood", **self.settings.to_dict())

    def __repr__(self) -> str:
        return (f"LikelihoodRewardModel(token_score={self.settings.token_score!r}, "
                f"model={getattr(self, 'name_or_path', None)!r})")


@register_reward_model("implicit")
class ImplicitRewardModel(_TokenScorer):
    """Implicit PRM: ``beta * log(pi / pi_ref)`` per step (see the module docstring).

    Args:
        model_name_or_path: a saved ``implicit`` directory (its reference in ``reference/``).
        reference: the reference model's directory (default: ``<dir>/reference``).
        device, dtype / torch_dtype, trust_remote_code, model_kwargs, tokenizer: as for
            :class:`~reward_models.process.ProcessRewardModel`.
        **settings: any :class:`ImplicitSettings` field.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str | None = None, *, reference=None,
                 tokenizer=None, dtype=None, torch_dtype=None, trust_remote_code: bool = False,
                 model_kwargs: dict[str, Any] | None = None, **settings: Any):
        from transformers import AutoModelForCausalLM

        path = Path(model_name_or_path)
        base = _saved_settings(path, "implicit")
        s = build_settings(ImplicitSettings, base, settings, source=str(path / CONFIG_NAME))
        ref_path = Path(reference) if reference is not None else path / REFERENCE_DIR
        if not ref_path.is_dir():
            raise FileNotFoundError(f"{path}: the implicit PRM's reference model {ref_path} does not exist; pass "
                                    "reference=<directory of the model it was trained from>")
        load = dict(device=device, dtype=dtype or torch_dtype, trust_remote_code=trust_remote_code,
                    **(model_kwargs or {}))
        model = hf_utils.load_hf_model(AutoModelForCausalLM, path, **load)
        ref = hf_utils.load_hf_model(AutoModelForCausalLM, ref_path, **load)
        tok = tokenizer if tokenizer is not None else hf_utils.load_tokenizer(path, trust_remote_code=trust_remote_code)
        self._setup(model, tok, s, where=str(path))
        self.ref_model = ref
        self.name_or_path = str(model_name_or_path)

    @classmethod
    def from_models(cls, model, ref_model, tokenizer, **settings: Any) -> ImplicitRewardModel:
        """Wrap an in-memory trained model and its reference (neither is copied)."""
        obj = cls.__new__(cls)
        obj._setup(model, tokenizer, ImplicitSettings(**settings), where=type(model).__name__)
        obj.ref_model = ref_model
        obj.name_or_path = getattr(model, "name_or_path", None)
        return obj

    def step_log_ratios(self, prompts, steps) -> list[list[float]]:
        """``beta * sum(log pi - log pi_ref)`` over each step's tokens (r_j, not cumulated)."""
        steps = [list(s) for s in steps]
        out: list[list[float]] = [[] for _ in steps]
        toks, todo = self._tokenize(prompts, steps)
        if not toks:
            return out
        seqs = [t.input_ids for t in toks]
        lp = token_logprobs(self.model, seqs, self.pad_token_id, self.settings.batch_size)
        lr = token_logprobs(self.ref_model, seqs, self.pad_token_id, self.settings.batch_size)
        for i, tok, (a_lp, _), (r_lp, _) in zip(todo, toks, lp, lr):
            diff = a_lp - r_lp
            out[i] = [self.settings.beta * float(diff[a:b].sum()) for a, b in self._spans(tok, steps[i])]
        return out

    def score_steps(self, prompts, steps):
        out = []
        for row in self.step_log_ratios(prompts, steps):
            if self.settings.cumulative:
                row = [sum(row[: j + 1]) for j in range(len(row))]
            out.append(hf_utils.to_output(torch.tensor(row, dtype=torch.float64), self.settings.output) if row else [])
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Weights and tokenizer, the reference in ``reference/``, and ``reward_config.json``."""
        hf_utils.save_hf(self.model, self.tokenizer, path)
        hf_utils.save_hf(self.ref_model, self.tokenizer, Path(path) / REFERENCE_DIR)
        write_reward_config(path, "implicit", **self.settings.to_dict())

    def __repr__(self) -> str:
        return f"ImplicitRewardModel(beta={self.settings.beta}, model={getattr(self, 'name_or_path', None)!r})"


def _saved_settings(path: Path, kind: str) -> dict[str, Any]:
    """Settings saved in ``path/reward_config.json`` (type checked), or {} for a plain LM directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    return saved_settings(path, kind)


__all__ = ["ImplicitRewardModel", "ImplicitSettings", "LikelihoodRewardModel", "LikelihoodSettings", "TOKEN_SCORES",
           "step_token_spans", "token_logprobs"]
