"""``ORMTrainer``: train an outcome reward model, and its feature builder :func:`build_orm_features`.

A 1-logit token-classification head trained with binary cross-entropy
(:func:`~reward_models.losses.masked_bce_loss`) on the completion's tokens, the prompt masked
(or on the last token only, ``ORMConfig.last_token_only``). Rows are read by
:func:`~reward_models.rows.read_outcome_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import Trainer

from reward_models import hf_utils
from reward_models import truncation as _trunc
from reward_models.losses import IGNORE_INDEX, masked_bce_loss
from reward_models.orm_config import ORMConfig
from reward_models.reliability import ReliableTrainerMixin
from reward_models.rows import OutcomeRow, read_outcome_rows, rows_of
from reward_models.steps import StepFormat, TokenizedSteps
from reward_models.trainer_utils import (
    ListDataset,
    RewardConfigOnSave,
    RewardDataCollator,
    cap_max_length,
    checked_features,
    load_token_classifier,
    trainer_inputs,
    truncate_tokenized,
)
from reward_models.types import DataError


def build_orm_features(rows: Sequence[OutcomeRow], tokenizer, step_format: StepFormat, *,
                       last_token_only: bool = False, max_length: int | None = None, truncation: str = "error",
                       min_prompt_tokens: int = 32, stats=None) -> list[dict[str, Any]]:
    """Prompt tokens get -100; completion tokens get the outcome label (or only the last one).

    The outcome label belongs to the whole completion: an over-long row may lose the end of
    its prompt (its head is kept, ``truncation="steps"``) but never part of its completion;
    when that cannot fit it is dropped and counted in ``stats`` (or raises with ``"error"``).

    >>> from reward_models.testing import tiny_tokenizer
    >>> f = build_orm_features([OutcomeRow("Q: 1\\n", "Answer: 1", 1.0)], tiny_tokenizer(), StepFormat(),
    ...                        last_token_only=True)[0]
    >>> [v for v in f["labels"] if v != -100]
    [1.0]
    """
    feats = []
    for i, row in enumerate(rows):
        try:
            if isinstance(row.completion, str):
                p_ids = list(tokenizer(row.prompt, add_special_tokens=True)["input_ids"]) if row.prompt else []
                c_ids = list(tokenizer(row.completion, add_special_tokens=False)["input_ids"])
                n = len(p_ids) + len(c_ids)
                tok = TokenizedSteps(input_ids=p_ids + c_ids, prompt_len=len(p_ids), spans=[(len(p_ids), n)],
                                     score_positions=[n - 1])
            else:
                tok = step_format.tokenize(tokenizer, row.prompt, row.completion)
        except DataError as e:
            raise e.at(row=i) from None
        if len(tok.input_ids) == tok.prompt_len:
            raise DataError("the completion tokenizes to no tokens", row=i, field="completion")
        kept = truncate_tokenized(tok, max_length, [len(tok.spans) - 1], truncation, min_prompt_tokens, stats, i)
        if kept is None:
            continue
        ids, prompt_len, _, _ = kept
        labels = [float(IGNORE_INDEX)] * len(ids)
        for j in ([len(ids) - 1] if last_token_only else range(prompt_len, len(ids))):
            labels[j] = row.label
        feats.append({"input_ids": ids, "labels": labels})
    return feats


class ORMTrainer(ReliableTrainerMixin, RewardConfigOnSave, Trainer):
    """Train an outcome reward model: a 1-logit token head, BCE on completion tokens (prompt masked)."""

    reward_type = "outcome"
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: ORMConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, data_collator=None, **kwargs):
        args, tokenizer = trainer_inputs(args, ORMConfig, "orm-output", model, processing_class, train_dataset)
        model = load_token_classifier(model, args, tokenizer, 1, "an outcome model (one logit per token)")
        cap_max_length(args, model)
        train_rows = read_outcome_rows(rows_of(train_dataset))
        self.step_format = args.resolve_separator(s for r in train_rows if not isinstance(r.completion, str)
                                                  for s in r.completion)
        self.truncation_stats: dict[str, dict[str, int]] = {}

        def feats(rows, split):
            stats = _trunc.empty_stats()
            out = build_orm_features(rows, tokenizer, self.step_format,
                                     last_token_only=args.last_token_only, max_length=args.max_length,
                                     truncation=args.truncation, min_prompt_tokens=args.min_prompt_tokens, stats=stats)
            return ListDataset(checked_features(out, stats, split, args.max_length, self.truncation_stats))

        super().__init__(model=model, args=args, train_dataset=feats(train_rows, "train"),
                         eval_dataset=feats(read_outcome_rows(rows_of(eval_dataset)), "eval")
                         if eval_dataset is not None else None,
                         processing_class=tokenizer,
                         data_collator=data_collator or RewardDataCollator(hf_utils.pad_id(tokenizer)), **kwargs)
        self.can_return_loss = True
        self.label_names = ["labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        loss = masked_bce_loss(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss

    def reward_settings(self) -> dict[str, Any]:
        return {"backend": "head", "reduce": self.args.reduce, "step_format": self.step_format.to_dict(),
                "output": "prob", "max_length": self.args.max_length}


__all__ = ["ORMTrainer", "build_orm_features"]
