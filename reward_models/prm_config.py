"""``PRMConfig``: the arguments of :class:`~reward_models.prm_trainer.PRMTrainer`.

``transformers.TrainingArguments`` plus the step format and truncation fields
(:class:`~reward_models.trainer_utils.StepFormatArgs`), LoRA / quantized loading
(:class:`~reward_models.trainer_utils.AdapterArgs`) and the PRM's own choices: backend
(``head``, ``token``, ``verification``), number of classes, label scheme and tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from reward_models.rows import LABEL_SCHEMES
from reward_models.trainer_utils import AdapterArgs, StepFormatArgs


@dataclass
class PRMConfig(StepFormatArgs, AdapterArgs, TrainingArguments):
    """Configuration of :class:`~reward_models.prm_trainer.PRMTrainer` (all ``TrainingArguments`` fields apply too).

    >>> PRMConfig(output_dir="/tmp/prm", backend="head", num_labels=2).step_format.separator
    '\\n'
    """

    backend: str = field(default="head", metadata={"help": "'head': a token-classification head read at each "
                                                           "step's score position; 'token': a causal LM's "
                                                           "positive/negative token logits there."})
    num_labels: int = field(default=2, metadata={"help": "2 (bad/good; soft labels allowed) or 3 (ratings "
                                                         "-1/0/+1, hard labels only; head backend)."})
    neutral: str = field(default="positive", metadata={"help": "How a neutral rating (0) counts: 'positive' or "
                                                               "'negative' (2-class training and 3-class scoring)."})
    label_scheme: str = field(default="auto", metadata={"help": "How integer labels read: 'binary' (0/1), 'rating' "
                                                                "(-1/0/1) or 'auto' (ratings when num_labels=3 or a "
                                                                "-1 occurs)."})
    last_step_only: bool = field(default=False, metadata={"help": "Train on each example's last step label only."})
    positive_token: str = field(default="+", metadata={"help": "Token backend: the token meaning 'good step'."})
    negative_token: str = field(default="-", metadata={"help": "Token backend: the token meaning 'bad step'."})
    prompt_template: str | None = field(default=None, metadata={"help": "Verification backend: the question per "
                                                                        "step, fields {problem}, {previous_steps}, "
                                                                        "{step} (default: the scorer's)."})
    yes_token: str = field(default=" Yes", metadata={"help": "Verification backend: the answer meaning 'correct'."})
    no_token: str = field(default=" No", metadata={"help": "Verification backend: the answer meaning 'wrong'."})
    lm_loss_weight: float = field(default=0.0, metadata={"help": "Verification backend: weight of a next-token loss "
                                                                 "on the solutions whose steps are all good (GenRM's "
                                                                 "joint training); 0 = off."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the trainer builds its own "
                                                                         "features."})

    def __post_init__(self) -> None:
        if self.backend not in ("head", "token", "verification"):
            raise ValueError(f"backend must be 'head', 'token' or 'verification', got {self.backend!r}")
        if self.backend == "verification":
            from reward_models.process import DEFAULT_STEP_TEMPLATE

            self.prompt_template = self.prompt_template or DEFAULT_STEP_TEMPLATE
            if "{step}" not in self.prompt_template:
                raise ValueError("prompt_template must contain the field {step}")
            if self.num_labels != 2:
                raise ValueError("the verification backend answers Yes or No: use num_labels=2")
            if not self.yes_token or not self.no_token or self.yes_token == self.no_token:
                raise ValueError("yes_token and no_token must be two different non-empty strings")
        if self.lm_loss_weight < 0 or (self.lm_loss_weight and self.backend != "verification"):
            raise ValueError("lm_loss_weight must be >= 0 and applies to backend='verification' only")
        if self.num_labels not in (2, 3):
            raise ValueError(f"num_labels must be 2 or 3, got {self.num_labels}")
        if self.backend == "token" and self.num_labels != 2:
            raise ValueError("the token backend scores with two tokens: use num_labels=2 (or backend='head')")
        if self.neutral not in ("positive", "negative"):
            raise ValueError(f"neutral must be 'positive' or 'negative', got {self.neutral!r}")
        if self.label_scheme not in LABEL_SCHEMES:
            raise ValueError(f"label_scheme must be one of {LABEL_SCHEMES}, got {self.label_scheme!r}")
        if self.backend == "token" and (not self.positive_token or not self.negative_token
                                        or self.positive_token == self.negative_token):
            raise ValueError("positive_token and negative_token must be two different non-empty strings")
        self._check_truncation_args()
        self.step_format  # noqa: B018 - validates separator/tag
        self._check_adapter_args()
        super().__post_init__()


__all__ = ["PRMConfig"]
