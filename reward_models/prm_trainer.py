"""``PRMTrainer``: train a process reward model, the loss read only at each step's score position.

TRL removed its ``PRMTrainer`` in 2026; this is its maintained successor, built on
``transformers.Trainer``. Call shape::

    trainer = PRMTrainer(model="path/or/model", args=PRMConfig(output_dir="out"),
                         processing_class=tokenizer, train_dataset=rows)
    trainer.train()
    trainer.save_model("out/final")     # -> load_reward_model("out/final")

Data: TRL stepwise rows (``prompt``, ``completions``, ``labels``),
:class:`~reward_models.types.StepSample` objects or their dicts (``prompt``, ``steps``,
``labels``), or a ``datasets.Dataset`` of either; labels as read by
:func:`~reward_models.rows.convert_step_label`.

Also here: the feature builders (:func:`build_prm_features` for the head and token backends,
:func:`build_verification_features` and :class:`NextTokenCollator` for the verification
backend) and :func:`predict_step_probs` (batched P(good step) from a trained model). The loss
math is in :mod:`reward_models.losses`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from reward_models import hf_utils
from reward_models import truncation as _trunc
from reward_models.hf_utils import token_id
from reward_models.losses import IGNORE_INDEX, masked_step_loss, token_pair_logits, weighted_next_token_loss
from reward_models.prm_config import PRMConfig
from reward_models.reliability import ReliableTrainerMixin
from reward_models.rows import (
    StepRow,
    as_row_dict,
    read_step_rows,
    resolve_label_scheme,
    rows_of,
    step_targets,
)
from reward_models.steps import StepFormat
from reward_models.trainer_utils import (
    ListDataset,
    RewardConfigOnSave,
    RewardDataCollator,
    apply_peft,
    cap_max_length,
    checked_features,
    load_model,
    load_token_classifier,
    trainer_inputs,
    truncate_tokenized,
)
from reward_models.types import DataError

logger = logging.getLogger(__name__)


class PRMTrainer(ReliableTrainerMixin, RewardConfigOnSave, Trainer):
    """Train a process reward model: loss only at each step's score position.

    Args:
        model: a directory (loaded with safetensors; ``AutoModelForTokenClassification`` with
            ``num_labels`` for the head backend, ``AutoModelForCausalLM`` for the token backend)
            or a loaded model of that kind.
        args: a :class:`PRMConfig`.
        processing_class: the tokenizer (found next to a path model when omitted).
        train_dataset / eval_dataset: TRL stepwise rows, StepSamples or dicts, or a Dataset.
    """

    reward_type = "process"
    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, model, args: PRMConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, data_collator=None, **kwargs):
        args, tokenizer = trainer_inputs(args, PRMConfig, "prm-output", model, processing_class, train_dataset)
        if args.backend == "head":
            model = load_token_classifier(model, args, tokenizer, args.num_labels, "backend='head'")
            self.positive_id = self.negative_id = None
        else:
            from transformers import AutoModelForCausalLM

            model = load_model(model, AutoModelForCausalLM, args, tokenizer)
            if args.backend == "verification":  # the scorer reads the answers' first tokens (hf_utils.token_id): the same ids
                self.positive_id = token_id(tokenizer, args.yes_token, "yes_token")
                self.negative_id = token_id(tokenizer, args.no_token, "no_token")
            else:
                self.positive_id = token_id(tokenizer, args.positive_token, "positive_token")
                self.negative_id = token_id(tokenizer, args.negative_token, "negative_token")
            model = apply_peft(model, args, "CAUSAL_LM", None)
        cap_max_length(args, model)
        rows = read_step_rows(rows_of(train_dataset))
        self.step_format = args.resolve_separator(s for r in rows for s in r.steps)
        self.label_scheme = resolve_label_scheme(rows, args.label_scheme, args.num_labels)
        self.truncation_stats: dict[str, dict[str, int]] = {}
        train = ListDataset(self._features(rows, tokenizer, args, "train"))
        evals = None
        if eval_dataset is not None:
            evals = ListDataset(self._features(read_step_rows(rows_of(eval_dataset)), tokenizer, args, "eval"))
        collator = NextTokenCollator(hf_utils.pad_id(tokenizer)) if args.backend == "verification" \
            else RewardDataCollator(hf_utils.pad_id(tokenizer))
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=evals,
                         processing_class=tokenizer, data_collator=data_collator or collator, **kwargs)
        self.can_return_loss = True
        self.label_names = ["labels"]

    def _features(self, rows: list[StepRow], tokenizer, args: PRMConfig, split: str) -> list[dict[str, Any]]:
        stats = _trunc.empty_stats()
        if args.backend == "verification":
            feats = build_verification_features(rows, tokenizer, self.step_format, args.prompt_template,
                                                self.positive_id, self.negative_id, scheme=self.label_scheme,
                                                neutral=args.neutral, last_step_only=args.last_step_only,
                                                lm_loss_weight=args.lm_loss_weight, max_length=args.max_length,
                                                stats=stats)
            return checked_features(feats, stats, split, args.max_length, self.truncation_stats)
        feats = build_prm_features(rows, tokenizer, self.step_format, num_labels=args.num_labels,
                                   scheme=self.label_scheme, neutral=args.neutral,
                                   last_step_only=args.last_step_only, max_length=args.max_length,
                                   truncation=args.truncation, min_prompt_tokens=args.min_prompt_tokens, stats=stats)
        return checked_features(feats, stats, split, args.max_length, self.truncation_stats)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = out.logits
        if self.args.backend == "verification":
            loss = weighted_next_token_loss(logits, inputs["labels"], inputs["weights"])
            return (loss, {"logits": logits}) if return_outputs else loss
        if self.args.backend == "token":
            logits = token_pair_logits(logits, self.positive_id, self.negative_id)
        loss = masked_step_loss(logits, inputs["labels"], self.args.num_labels)
        return (loss, {"logits": logits}) if return_outputs else loss

    def reward_settings(self) -> dict[str, Any]:
        a = self.args
        s: dict[str, Any] = {"backend": a.backend, "step_format": self.step_format.to_dict(), "output": "prob",
                             "num_labels": a.num_labels, "max_length": a.max_length}
        if a.num_labels == 3:
            s["neutral"] = a.neutral
        if a.backend == "token":
            s["positive_token"], s["negative_token"] = a.positive_token, a.negative_token
        if a.backend == "verification":
            s.update(prompt_template=a.prompt_template, yes_token=a.yes_token, no_token=a.no_token)
        return s


@dataclass
class NextTokenCollator:
    """Right-pads ``input_ids`` (pad id), ``labels`` (-100) and ``weights`` (0)."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        b = len(features)
        ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        weights = torch.zeros((b, length))
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(f["labels"])
            weights[i, :n] = torch.as_tensor(f["weights"], dtype=torch.float)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def build_prm_features(rows: Sequence[StepRow], tokenizer, step_format: StepFormat, *, num_labels: int = 2,
                       scheme: str = "binary", neutral: str = "positive", last_step_only: bool = False,
                       max_length: int | None = None, truncation: str = "error", min_prompt_tokens: int = 32,
                       stats=None) -> list[dict[str, Any]]:
    """Tokenize rows piecewise; labels sit at score positions only (elsewhere -100).

    Rows longer than ``max_length`` raise (``truncation="error"``) or follow the policy of
    :mod:`reward_models.truncation` (``"steps"``); ``stats`` (a ``Counter``) receives the counts.

    >>> from reward_models.testing import tiny_tokenizer
    >>> f = build_prm_features([StepRow("Q: 1+2\\n", ["1+2=3", "Answer: 3"], [True, True])], tiny_tokenizer(),
    ...                        StepFormat())[0]
    >>> [v for v in f["labels"] if v != -100]
    [1.0, 1.0]
    """
    feats = []
    for i, row in enumerate(rows):
        try:
            targets = step_targets(row, num_labels=num_labels, scheme=scheme, neutral=neutral,
                                   last_step_only=last_step_only)
            tok = step_format.tokenize(tokenizer, row.prompt, row.steps)
        except DataError as e:
            raise e.at(row=i) from None
        scored = [j for j, t in enumerate(targets) if t != IGNORE_INDEX]
        kept = truncate_tokenized(tok, max_length, scored, truncation, min_prompt_tokens, stats, i)
        if kept is None:
            continue
        ids, _, positions, _ = kept
        labels = [float(IGNORE_INDEX)] * len(ids)
        for pos, t in zip(positions, targets):
            labels[pos] = t
        feats.append({"input_ids": ids, "labels": labels})
    return feats


@torch.no_grad()
def predict_step_probs(model, tokenizer, samples: Sequence[Any], step_format: StepFormat | None = None, *,
                       backend: str = "head", num_labels: int = 2, neutral: str = "positive",
                       positive_token: str = "+", negative_token: str = "-", batch_size: int = 32) -> list[list[float]]:
    """P(good step) for every step of every sample, from one batched forward pass per batch.

    ``samples``: StepSamples, dicts or TRL stepwise rows (labels are ignored). With 3 classes
    P(good) is ``p(+1)`` plus ``p(0)`` when ``neutral == "positive"``.
    """
    fmt = step_format or StepFormat()
    items = [as_row_dict(s) for s in samples]
    pairs = [(d["prompt"], list(d["completions"] if "completions" in d else d["steps"])) for d in items]
    pos_id = neg_id = None
    if backend == "token":
        pos_id = token_id(tokenizer, positive_token, "positive_token")
        neg_id = token_id(tokenizer, negative_token, "negative_token")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = hf_utils.pad_id(tokenizer)
    out: list[list[float]] = []
    try:
        for b in range(0, len(pairs), batch_size):
            chunk = pairs[b:b + batch_size]
            toks = fmt.tokenize_many(tokenizer, [p for p, _ in chunk], [s for _, s in chunk],
                                     rows=range(b, b + len(chunk)))
            length = max(len(t) for t in toks)
            ids = torch.full((len(toks), length), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, t in enumerate(toks):
                ids[i, :len(t)] = torch.as_tensor(t.input_ids)
                mask[i, :len(t)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            if backend == "token":
                logits = token_pair_logits(logits, pos_id, neg_id)
            probs = logits.softmax(-1).cpu()
            for i, t in enumerate(toks):
                p = probs[i, t.score_positions]
                if num_labels == 3:
                    good = p[:, 2] + (p[:, 1] if neutral == "positive" else 0.0)
                else:
                    good = p[:, 1]
                out.append([float(v) for v in good])
    finally:
        model.train(was_training)
    return out


def build_verification_features(rows: Sequence[StepRow], tokenizer, step_format: StepFormat, template: str,
                                yes_id: int, no_id: int, *, scheme: str = "binary", neutral: str = "positive",
                                last_step_only: bool = False, lm_loss_weight: float = 0.0,
                                max_length: int | None = None, stats=None) -> list[dict[str, Any]]:
    """One example per labeled step: the verification question (as the scorer lays it out) followed
    by its answer token (Yes when the step's label is >= 0.5, else No), the answer the only target.
    With ``lm_loss_weight`` > 0, every all-good solution adds a next-token example over its steps.
    A question longer than ``max_length`` drops that example (counted)."""
    from reward_models.process import fill_template

    feats = []
    for i, row in enumerate(rows):
        try:
            targets = step_targets(row, num_labels=2, scheme=scheme, neutral=neutral, last_step_only=last_step_only)
            for j, step in enumerate(row.steps):
                step_format.check_step(step, j)
        except DataError as e:
            raise e.at(row=i) from None
        todo = [(j, t) for j, t in enumerate(targets) if t != IGNORE_INDEX]
        examples = []
        for j, t in todo:
            prev = step_format.join(row.steps[:j], complete=False) if j else ""
            q = list(tokenizer(fill_template(template, problem=row.prompt, previous_steps=prev, step=row.steps[j]),
                               add_special_tokens=True)["input_ids"])
            ids = q + [yes_id if t >= 0.5 else no_id]
            examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(q) + [ids[-1]],
                             "weights": [0.0] * len(q) + [1.0]})
        if lm_loss_weight > 0 and all(t >= 0.5 for t in targets if t != IGNORE_INDEX):
            tok = step_format.tokenize(tokenizer, row.prompt, row.steps)
            ids = list(tok.input_ids)
            examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * tok.prompt_len + ids[tok.prompt_len:],
                             "weights": [0.0] * tok.prompt_len + [lm_loss_weight] * (len(ids) - tok.prompt_len)})
        for ex in examples:
            if stats is not None:
                stats["examples"] += 1
            if max_length is not None and len(ex["input_ids"]) > max_length:
                if stats is not None:
                    stats["examples_dropped"] += 1
                logger.warning("row %d: a %d-token verification example is longer than max_length=%d: dropped "
                               "(counted)", i, len(ex["input_ids"]), max_length)
                continue
            feats.append(ex)
    return feats


__all__ = ["NextTokenCollator", "PRMTrainer", "build_prm_features", "build_verification_features",
           "predict_step_probs"]
