"""Train an implicit process reward model (PRIME, arXiv 2412.01981) with step or outcome labels.

The reward model is a causal LM ``pi`` and a frozen reference ``pi_ref`` (a copy of ``pi`` taken
before training unless given). Step ``j``'s reward is ``r_j = beta * sum(log pi(t) - log pi_ref(t))``
over the step's tokens and ``q_j = r_0 + ... + r_j``; training minimises the binary cross-entropy
of ``sigmoid(q_j)`` against each labeled step (``label_level="step"``, labels where a step is good
only when every step so far is), or of the whole solution's ``q`` against its outcome label
(``label_level="outcome"``: the last step's label, PRIME's setting, which needs no process labels).

Because the score is carried by token probabilities, what the LM already knows (that ``14+2`` is
``16``) is what the trainer sharpens; a fresh classification head would have to learn it from the
labels alone. The result loads as :class:`reward_models.likelihood.ImplicitRewardModel`::

    trainer = ImplicitPRMTrainer(model="policy_dir", args=ImplicitPRMConfig(output_dir="out"),
                                 train_dataset=labeled_samples, processing_class=tokenizer)
    trainer.train(); trainer.save_model("out/prm")     # -> load_reward_model("out/prm")
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from reward_models import hf_utils
from reward_models import truncation as _trunc
from reward_models.likelihood import REFERENCE_DIR, step_token_spans
from reward_models.losses import IGNORE_INDEX
from reward_models.reliability import ReliableTrainerMixin
from reward_models.rows import StepRow, read_step_rows, rows_of, step_targets
from reward_models.trainer_utils import (
    AdapterArgs,
    ListDataset,
    RewardConfigOnSave,
    StepFormatArgs,
    apply_peft,
    checked_features,
    load_model,
    trainer_inputs,
    truncate_tokenized,
)
from reward_models.types import DataError

logger = logging.getLogger(__name__)

LABEL_LEVELS = ("step", "outcome")


@dataclass
class ImplicitPRMConfig(StepFormatArgs, AdapterArgs, TrainingArguments):
    """Configuration of :class:`ImplicitPRMTrainer` (all ``TrainingArguments`` fields apply too)."""

    beta: float = field(default=0.05, metadata={"help": "Scale of the log-likelihood ratio (the reward is "
                                                        "beta * log(pi / pi_ref))."})
    label_level: str = field(default="step", metadata={"help": "'step': a loss at every labeled step; 'outcome': "
                                                               "only the solution's last label (PRIME)."})
    include_separator: bool = field(default=True, metadata={"help": "Count the separator tokens after each step."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the trainer builds its own "
                                                                         "features."})

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.label_level not in LABEL_LEVELS:
            raise ValueError(f"label_level must be one of {LABEL_LEVELS}, got {self.label_level!r}")
        self._check_truncation_args()
        self.step_format  # noqa: B018 - validates separator/tag
        self._check_adapter_args()
        super().__post_init__()


def implicit_loss(token_logps: torch.Tensor, ref_logps: torch.Tensor, step_index: torch.Tensor,
                  step_labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean BCE of ``sigmoid(q_j)`` against the labeled steps.

    Args:
        token_logps / ref_logps: [B, T] log-probabilities of each token under ``pi`` / ``pi_ref``.
        step_index: [B, T] long, the step a token counts for (``-1``: none).
        step_labels: [B, S] float targets in ``[0, 1]``, ``-100`` where a step has no label.
        beta: the reward scale.

    >>> lp = torch.tensor([[0.0, -1.0, -1.0]]); ref = torch.tensor([[0.0, -2.0, -1.0]])
    >>> round(implicit_loss(lp, ref, torch.tensor([[-1, 0, 1]]), torch.tensor([[1.0, 1.0]]), 1.0).item(), 4)
    0.3133
    """
    n_steps = step_labels.shape[1]
    diff = (token_logps - ref_logps) * (step_index >= 0)
    per_step = torch.zeros(diff.shape[0], n_steps + 1, dtype=diff.dtype, device=diff.device)
    per_step.scatter_add_(1, (step_index.clamp(min=-1) + 1), diff)  # slot 0 collects unused tokens
    q = beta * per_step[:, 1:].cumsum(-1)
    mask = step_labels != IGNORE_INDEX
    if not mask.any():
        return q.sum() * 0.0
    return F.binary_cross_entropy_with_logits(q[mask], step_labels[mask].to(q.dtype))


@dataclass
class ImplicitCollator:
    """Right-pads ``input_ids``, ``step_index`` (-1) and ``step_labels`` (-100)."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        steps = max(len(f["step_labels"]) for f in features)
        b = len(features)
        ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        index = torch.full((b, length), -1, dtype=torch.long)
        labels = torch.full((b, steps), float(IGNORE_INDEX))
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"])
            mask[i, :n] = 1
            index[i, :n] = torch.as_tensor(f["step_index"])
            labels[i, : len(f["step_labels"])] = torch.as_tensor(f["step_labels"], dtype=torch.float)
        return {"input_ids": ids, "attention_mask": mask, "step_index": index, "step_labels": labels}


def build_implicit_features(rows: list[StepRow], tokenizer, args: ImplicitPRMConfig, stats=None) -> list[dict]:
    """Tokenize rows piecewise; each token knows its step; labels per step (outcome level: last only)."""
    fmt = args.step_format
    feats = []
    for i, row in enumerate(rows):
        try:
            targets = step_targets(row, num_labels=2, scheme="binary", neutral="positive",
                                   last_step_only=args.label_level == "outcome")
            tok = fmt.tokenize(tokenizer, row.prompt, row.steps)
        except DataError as e:
            raise e.at(row=i) from None
        scored = [j for j, t in enumerate(targets) if t != IGNORE_INDEX]
        kept = truncate_tokenized(tok, args.max_length, scored, args.truncation, args.min_prompt_tokens, stats, i)
        if kept is None:
            continue
        ids, prompt_keep, _, n_steps = kept
        cut = tok.prompt_len - prompt_keep
        index = [-1] * len(ids)
        for j, (a, b) in enumerate(step_token_spans(tok, fmt, tokenizer, row.steps, args.include_separator)[:n_steps]):
            for t in range(a - cut, b - cut):
                if t >= 1:
                    index[t] = j
        feats.append({"input_ids": ids, "step_index": index, "step_labels": targets[:n_steps]})
    return feats


def sequence_token_logps(model, input_ids, attention_mask) -> torch.Tensor:
    """[B, T] log-probability of each token given the ones before it (0 at position 0)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return F.pad(logp, (1, 0))


class ImplicitPRMTrainer(ReliableTrainerMixin, RewardConfigOnSave, Trainer):
    """Train an implicit PRM (see the module docstring).

    Args:
        model: a causal-LM directory (loaded with safetensors) or a loaded causal LM.
        args: an :class:`ImplicitPRMConfig`.
        ref_model: the frozen reference (default: a copy of ``model`` before training).
        processing_class: the tokenizer (found next to a path model when omitted).
        train_dataset / eval_dataset: TRL stepwise rows, StepSamples or dicts (``labels`` per step).
    """

    reward_type = "implicit"
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: ImplicitPRMConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, ref_model=None, data_collator=None, **kwargs):
        from transformers import AutoModelForCausalLM

        args, tokenizer = trainer_inputs(args, ImplicitPRMConfig, "implicit-prm-output", model, processing_class,
                                         train_dataset)
        model = load_model(model, AutoModelForCausalLM, args, tokenizer)
        if args.use_peft:  # the reference is the same weights with the adapter switched off
            if ref_model is not None:
                raise ValueError("with use_peft=True the reference is the base model (adapter disabled): do not "
                                 "pass ref_model")
            model, ref = apply_peft(model, args, "CAUSAL_LM", None), None
        else:
            ref = ref_model if ref_model is not None else copy.deepcopy(model)
            ref.eval()
            for p in ref.parameters():
                p.requires_grad_(False)
        self.step_format = args.step_format
        self.truncation_stats: dict[str, dict[str, int]] = {}

        def feats(data, split):
            stats = _trunc.empty_stats()
            out = build_implicit_features(read_step_rows(rows_of(data)), tokenizer, args, stats)
            return ListDataset(checked_features(out, stats, split, args.max_length, self.truncation_stats))

        train = feats(train_dataset, "train")
        evals = feats(eval_dataset, "eval") if eval_dataset is not None else None
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
                         data_collator=data_collator or ImplicitCollator(hf_utils.pad_id(tokenizer)), **kwargs)
        self.ref_model = ref.to(self.args.device) if ref is not None else None
        self.can_return_loss = True
        self.label_names = ["step_labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        logps = sequence_token_logps(model, ids, mask)
        with torch.no_grad():
            if self.ref_model is None:
                with self.accelerator.unwrap_model(model).disable_adapter():
                    ref = sequence_token_logps(model, ids, mask)
            else:
                ref = sequence_token_logps(self.ref_model, ids, mask)
        loss = implicit_loss(logps, ref, inputs["step_index"], inputs["step_labels"], self.args.beta)
        return (loss, {"logps": logps}) if return_outputs else loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save and self.ref_model is not None:  # a LoRA run's reference is its base model
            import os

            path = os.path.join(output_dir or self.args.output_dir, REFERENCE_DIR)
            self.ref_model.save_pretrained(path, safe_serialization=True)
            self.processing_class.save_pretrained(path)

    def reward_settings(self) -> dict[str, Any]:
        a = self.args
        return {"step_format": self.step_format.to_dict(), "beta": a.beta, "cumulative": True,
                "include_separator": a.include_separator, "output": "prob", "max_length": a.max_length}


__all__ = ["ImplicitCollator", "ImplicitPRMConfig", "ImplicitPRMTrainer", "build_implicit_features", "implicit_loss",
           "sequence_token_logps"]
