"""``ORMConfig``: the arguments of :class:`~reward_models.orm_trainer.ORMTrainer`.

``transformers.TrainingArguments`` plus the step format and truncation fields
(:class:`~reward_models.trainer_utils.StepFormatArgs`), LoRA / quantized loading
(:class:`~reward_models.trainer_utils.AdapterArgs`), where the outcome label goes
(``last_token_only``) and how the saved model reduces per-token scores (``reduce``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from reward_models.trainer_utils import AdapterArgs, StepFormatArgs


@dataclass
class ORMConfig(StepFormatArgs, AdapterArgs, TrainingArguments):
    """Configuration of :class:`~reward_models.orm_trainer.ORMTrainer`: per-token BCE on completion tokens, or the last token only."""

    last_token_only: bool = field(default=False, metadata={"help": "Put the outcome label on the completion's "
                                                                   "last token only (default: every completion "
                                                                   "token, prompt masked)."})
    reduce: str | None = field(default=None, metadata={"help": "How the saved model turns per-token scores into "
                                                               "one: 'last' or 'mean' (default: 'last' with "
                                                               "last_token_only, else 'mean')."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the trainer builds its own "
                                                                         "features."})

    def __post_init__(self) -> None:
        if self.reduce is None:
            self.reduce = "last" if self.last_token_only else "mean"
        if self.reduce not in ("last", "mean"):
            raise ValueError(f"reduce must be 'last' or 'mean', got {self.reduce!r}")
        self._check_truncation_args()
        self.step_format  # noqa: B018
        self._check_adapter_args()
        super().__post_init__()


__all__ = ["ORMConfig"]
