"""Trainers for process (PRM), outcome (ORM) and Bradley-Terry reward models.

TRL removed its ``PRMTrainer`` in 2026; this module is its maintained successor, built on
``transformers.Trainer`` (PRM, ORM) and ``trl.RewardTrainer`` (Bradley-Terry). Call shape::

    trainer = PRMTrainer(model="path/or/model", args=PRMConfig(output_dir="out"),
                         processing_class=tokenizer, train_dataset=rows)
    trainer.train()
    trainer.save_model("out/final")     # -> load_reward_model("out/final")

Data for :class:`PRMTrainer`: TRL stepwise rows (``prompt``, ``completions``, ``labels``),
:class:`~reward_models.types.StepSample` objects or their dicts (``prompt``, ``steps``,
``labels``), or a ``datasets.Dataset`` of either. Labels may be bools, ``"+"``/``"-"``,
ratings ``-1/0/1`` (2 or 3 classes) or floats in ``[0, 1]`` (soft, e.g. Monte-Carlo
estimates); see :func:`convert_step_label`.

Each example is tokenized piecewise with :meth:`StepFormat.tokenize`; the loss is read only
at each step's score position (the step's last token, or its tag). The loss math lives in
small pure functions (:func:`soft_cross_entropy`, :func:`masked_step_loss`,
:func:`masked_bce_loss`, :func:`token_pair_logits`).

Saved directories hold safetensors weights (the adapter only with LoRA), the tokenizer and
a ``reward_config.json``; every ``checkpoint-N`` directory carries the same files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from trl import RewardConfig, RewardTrainer

from reward_models import truncation as _trunc
from reward_models._hf import token_id
from reward_models._reliability import ReliableTrainerMixin
from reward_models.base import write_reward_config
from reward_models.steps import StepFormat, TokenizedSteps
from reward_models.types import DataError, StepSample

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
HEAD_NAMES = ("classifier", "score", "v_head")


# =============================================================================================
# Pure loss functions
# =============================================================================================
def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of 2-way ``logits`` [N, 2] (``[bad, good]``) against ``P(good) = targets`` [N].

    With hard targets (0/1) this equals ordinary cross-entropy; soft targets ``y`` use the
    target distribution ``[1 - y, y]``.

    >>> round(soft_cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([1.0])).item(), 4)
    0.6931
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    targets = targets.float()
    return -((1.0 - targets) * logp[:, 0] + targets * logp[:, 1]).mean()


def masked_step_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int = 2) -> torch.Tensor:
    """Step loss over positions whose label is not ``-100``.

    Args:
        logits: [B, T, C] per-token class logits (C = 2: ``[bad, good]``; C = 3: ratings
            ``-1, 0, +1`` as classes ``0, 1, 2``).
        labels: [B, T] float; ``-100`` everywhere but score positions; there ``P(good)`` in
            ``[0, 1]`` for 2 classes, the class index for 3.
        num_labels: 2 (soft cross-entropy) or 3 (hard cross-entropy).

    A batch without any labeled position gives a zero loss that keeps the graph.
    """
    mask = labels != IGNORE_INDEX
    if not bool(mask.any()):
        return logits.sum() * 0.0
    picked, targets = logits[mask], labels[mask]
    if num_labels == 2:
        return soft_cross_entropy(picked, targets)
    if num_labels == 3:
        return F.cross_entropy(picked.float(), targets.long())
    raise ValueError(f"num_labels must be 2 or 3, got {num_labels}")


def masked_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of per-token logits [B, T] (or [B, T, 1]) where labels != -100.

    >>> round(masked_bce_loss(torch.zeros(1, 3), torch.tensor([[-100.0, 1.0, 0.0]])).item(), 4)
    0.6931
    """
    if logits.dim() == 3:
        logits = logits.squeeze(-1)
    mask = labels != IGNORE_INDEX
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask].float(), labels[mask].float())


def token_pair_logits(lm_logits: torch.Tensor, positive_id: int, negative_id: int) -> torch.Tensor:
    """Pick ``[negative, positive]`` token logits from LM logits [B, T, V] -> [B, T, 2].

    The order matches the head backend's classes ``[bad, good]``, so the same step loss applies.
    """
    return torch.stack([lm_logits[..., negative_id], lm_logits[..., positive_id]], dim=-1)


# =============================================================================================
# Label conversion
# =============================================================================================
LABEL_SCHEMES = ("auto", "binary", "rating")
TRUNCATION_MODES = ("steps", "error")


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


def _as_row_dict(item: Any) -> Mapping[str, Any]:
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
            d = _as_row_dict(item)
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


# =============================================================================================
# Collator
# =============================================================================================
@dataclass
class RewardDataCollator:
    """Right-pads ``input_ids`` (with ``pad_token_id``) and float ``labels`` (with -100).

    Returns ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long, ``labels`` [B, T] float.

    >>> c = RewardDataCollator(pad_token_id=0)
    >>> c([{"input_ids": [5, 6], "labels": [-100.0, 1.0]}, {"input_ids": [7], "labels": [0.5]}])["labels"].tolist()
    [[-100.0, 1.0], [0.5, -100.0]]
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        labels = torch.full((len(features), length), float(IGNORE_INDEX), dtype=torch.float)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.float)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


# =============================================================================================
# Configs
# =============================================================================================
def _cuda_ready(what: str) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"{what} needs a CUDA GPU (bitsandbytes kernels); none is available here. "
                         "Train in full precision on this machine, or run on a CUDA machine.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(f"{what} needs the bitsandbytes package: pip install bitsandbytes") from None


@dataclass
class _AdapterArgs:
    """LoRA and quantized-loading fields shared by the three configs."""

    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights; "
                                                            "the reward head is trained fully (modules_to_save)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt; default: 'all-linear' (every linear layer but the "
                                        "output layer)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model in 4 bit (QLoRA; needs CUDA, "
                                                                "bitsandbytes and use_peft)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base model in 8 bit (needs CUDA, "
                                                                "bitsandbytes and use_peft)."})

    def _check_adapter_args(self) -> None:
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise ValueError("lora_r and lora_alpha must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("lora_dropout must be in [0, 1)")
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("choose one of load_in_4bit and load_in_8bit")
        if self.load_in_4bit or self.load_in_8bit:
            if not self.use_peft:
                raise ValueError("quantized loading (load_in_4bit/load_in_8bit) trains adapters only: set use_peft=True")
            _cuda_ready("load_in_4bit" if self.load_in_4bit else "load_in_8bit")
        optim = str(getattr(self, "optim", ""))
        if "8bit" in optim:
            _cuda_ready(f"optim={optim!r}")

    def quantization_config(self):
        """A ``BitsAndBytesConfig`` for the chosen loading, or None."""
        if not (self.load_in_4bit or self.load_in_8bit):
            return None
        from transformers import BitsAndBytesConfig

        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)

    def lora_config(self, task_type: str, modules_to_save: list[str] | None):
        """A ``peft.LoraConfig`` for ``task_type`` (``TOKEN_CLS``, ``CAUSAL_LM``, ``SEQ_CLS``)."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules or "all-linear", task_type=task_type,
                          modules_to_save=modules_to_save)


@dataclass
class _StepFormatArgs:
    step_separator: str = field(default="\n", metadata={"help": "Text after each step (StepFormat.separator)."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag after each step "
                                                                 "(e.g. ' ки'); scores are read at it."})
    final_separator: bool = field(default=True, metadata={"help": "Whether the last step is followed by the "
                                                                  "separator too."})
    max_length: int = field(default=1024, metadata={"help": "Longest tokenized example; a longer one follows "
                                                            "`truncation` (never cut inside a step)."})
    truncation: str = field(default="steps", metadata={"help": "Over-long examples: 'steps' (drop whole trailing "
                                                               "steps, then cut the prompt's end keeping its head; "
                                                               "drop the example, counted, when its scored step "
                                                               "cannot fit; see reward_models.truncation) or "
                                                               "'error' (refuse, naming the row)."})
    min_prompt_tokens: int = field(default=32, metadata={"help": "The prompt is never cut below this many tokens."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model directory "
                                                                     "(off unless you trust it)."})

    @property
    def step_format(self) -> StepFormat:
        return StepFormat(separator=self.step_separator, tag=self.step_tag, final_separator=self.final_separator)

    def _check_truncation_args(self) -> None:
        if self.max_length <= 0:
            raise ValueError("max_length must be positive")
        if self.truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {self.truncation!r}")
        if self.min_prompt_tokens < 0:
            raise ValueError("min_prompt_tokens must be >= 0")


@dataclass
class PRMConfig(_StepFormatArgs, _AdapterArgs, TrainingArguments):
    """Configuration of :class:`PRMTrainer` (all ``TrainingArguments`` fields apply too).

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


@dataclass
class ORMConfig(_StepFormatArgs, _AdapterArgs, TrainingArguments):
    """Configuration of :class:`ORMTrainer`: per-token BCE on completion tokens, or the last token only."""

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


# =============================================================================================
# Model loading shared by PRM and ORM
# =============================================================================================
def find_head_name(model) -> str | None:
    """Attribute name of a classification head (``classifier`` for GPT-2, ``score`` for Llama/Qwen)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in HEAD_NAMES:
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return name
    return None


def _load_model(model, auto_cls, args, tokenizer, **kwargs):
    """Load ``model`` (a path) with ``auto_cls`` safely, or return the given model."""
    if isinstance(model, (str, os.PathLike)):
        from reward_models.base import refuse_pickles

        refuse_pickles(model)
        quant = args.quantization_config()
        extra = {"quantization_config": quant} if quant is not None else {}
        model = auto_cls.from_pretrained(str(model), use_safetensors=True, trust_remote_code=args.trust_remote_code,
                                         **kwargs, **extra)
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.load_in_4bit or args.load_in_8bit:
        logger.warning("load_in_4bit/load_in_8bit apply when the model is given as a path; the loaded model is "
                       "used as is")
    if getattr(model.config, "pad_token_id", None) is None and tokenizer is not None:
        model.config.pad_token_id = _pad_id(tokenizer)
    return model


def _require_token_classifier(model, what: str) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__name__.endswith("ForTokenClassification"):
        raise TypeError(f"{what} needs a token-classification model (one score per token), got "
                        f"{type(base).__name__}: pass the model's directory to load it as "
                        "AutoModelForTokenClassification (a new head is added), or use backend='token' for a causal LM")


def _apply_peft(model, args, task_type: str, modules_to_save: list[str] | None):
    if not args.use_peft:
        return model
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError("the model is already a PeftModel and use_peft=True: pass the base model, or set "
                         "use_peft=False to keep training the given adapter")
    model = get_peft_model(model, args.lora_config(task_type, modules_to_save))
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def _tokenizer_for(model, processing_class, trust_remote_code: bool):
    if processing_class is not None:
        return processing_class
    from transformers import AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        return AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if path and os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    raise ValueError("pass processing_class=<tokenizer>: it cannot be found from the given model")


def _rows_of(dataset) -> list[Any]:
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


def _replace_pickled_args(output_dir: str, args) -> None:
    """Trainer pickles its arguments to ``training_args.bin``; keep them as JSON instead (no pickles on disk)."""
    from pathlib import Path

    pickled = Path(output_dir) / "training_args.bin"
    if pickled.exists():
        pickled.unlink()
    (Path(output_dir) / "training_args.json").write_text(args.to_json_string())


def _checked_features(feats: list, stats, split: str, max_length: int, into: dict) -> list:
    """Record/log the truncation counts of one split; refuse a split left empty."""
    into[split] = dict(stats)
    _log_truncation(stats, f"{split}_dataset", max_length)
    if not feats:
        raise DataError(f"no usable example: {stats['examples_dropped']} of {stats['examples']} cannot fit "
                        f"max_length={max_length}" if stats["examples"] else "the dataset is empty",
                        source=f"{split}_dataset")
    return feats


class _RewardConfigOnSave:
    """Mixin: ``save_model`` (also used for every checkpoint) writes ``reward_config.json``."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)  # type: ignore[misc]
        output_dir = output_dir or self.args.output_dir  # type: ignore[attr-defined]
        if self.args.should_save:  # type: ignore[attr-defined]
            _replace_pickled_args(output_dir, self.args)  # type: ignore[attr-defined]
            write_reward_config(output_dir, self.reward_type, **self.reward_settings())

    def reward_settings(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


# =============================================================================================
# PRM
# =============================================================================================
class PRMTrainer(ReliableTrainerMixin, _RewardConfigOnSave, Trainer):
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
        if args is None:
            args = PRMConfig(output_dir="prm-output")
        if not isinstance(args, PRMConfig):
            raise TypeError(f"args must be a PRMConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        tokenizer = _tokenizer_for(model, processing_class, args.trust_remote_code)
        self.step_format = args.step_format
        if args.backend == "head":
            from transformers import AutoModelForTokenClassification

            model = _load_model(model, AutoModelForTokenClassification, args, tokenizer, num_labels=args.num_labels)
            _require_token_classifier(model, "backend='head'")
            got = getattr(model.config, "num_labels", None)
            if got != args.num_labels:
                raise ValueError(f"the model has num_labels={got} but PRMConfig.num_labels={args.num_labels}")
            model = _apply_peft(model, args, "TOKEN_CLS", [h] if (h := find_head_name(model)) else None)
            self.positive_id = self.negative_id = None
        else:
            from transformers import AutoModelForCausalLM

            model = _load_model(model, AutoModelForCausalLM, args, tokenizer)
            if args.backend == "verification":  # the scorer reads the answers' first tokens (_hf.token_id): the same ids
                self.positive_id = token_id(tokenizer, args.yes_token, "yes_token")
                self.negative_id = token_id(tokenizer, args.no_token, "no_token")
            else:
                self.positive_id = token_id(tokenizer, args.positive_token, "positive_token")
                self.negative_id = token_id(tokenizer, args.negative_token, "negative_token")
            model = _apply_peft(model, args, "CAUSAL_LM", None)
        rows = read_step_rows(_rows_of(train_dataset))
        self.label_scheme = resolve_label_scheme(rows, args.label_scheme, args.num_labels)
        self.truncation_stats: dict[str, dict[str, int]] = {}
        train = _ListDataset(self._features(rows, tokenizer, args, "train"))
        evals = None
        if eval_dataset is not None:
            evals = _ListDataset(self._features(read_step_rows(_rows_of(eval_dataset)), tokenizer, args, "eval"))
        collator = NextTokenCollator(_pad_id(tokenizer)) if args.backend == "verification" \
            else RewardDataCollator(_pad_id(tokenizer))
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
            return _checked_features(feats, stats, split, args.max_length, self.truncation_stats)
        feats = build_prm_features(rows, tokenizer, self.step_format, num_labels=args.num_labels,
                                   scheme=self.label_scheme, neutral=args.neutral,
                                   last_step_only=args.last_step_only, max_length=args.max_length,
                                   truncation=args.truncation, min_prompt_tokens=args.min_prompt_tokens, stats=stats)
        return _checked_features(feats, stats, split, args.max_length, self.truncation_stats)

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


def weighted_next_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean next-token cross-entropy.

    Args:
        logits: [B, T, V]; position ``t`` predicts token ``t + 1``.
        labels: [B, T] long, the token at each position (``-100``: not a target).
        weights: [B, T] float, each target's weight.

    >>> lg = torch.zeros(1, 2, 3); round(weighted_next_token_loss(lg, torch.tensor([[-100, 1]]),
    ...                                                          torch.tensor([[0.0, 1.0]])).item(), 4)
    1.0986
    """
    tgt, w = labels[:, 1:], weights[:, 1:].float()
    keep = tgt != IGNORE_INDEX
    if not keep.any():
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits[:, :-1][keep].float(), tgt[keep], reduction="none")
    return (ce * w[keep]).sum() / w[keep].sum().clamp(min=1e-12)


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


def _too_long(n_tokens: int, max_length: int, row: int) -> DataError:
    return DataError(f"tokenizes to {n_tokens} tokens, more than max_length={max_length}; raise max_length, shorten "
                     "the example or use truncation='steps' (nothing is cut silently)", row=row)


def _truncate_tokenized(tok, max_length: int | None, scored: list[int], truncation: str, min_prompt_tokens: int,
                        stats, row: int):
    """Apply the truncation policy to one piecewise-tokenized example.

    Returns ``(ids, prompt_len, kept score positions, steps kept)`` or None when the example is dropped."""
    if max_length is None or len(tok.input_ids) <= max_length:
        if stats is not None:
            stats["examples"] += 1
        return list(tok.input_ids), tok.prompt_len, list(tok.score_positions), len(tok.spans)
    if truncation == "error":
        raise _too_long(len(tok.input_ids), max_length, row)
    res = _trunc.truncate_steps(tok.prompt_len, [e - s for s, e in tok.spans], max_length, scored=scored,
                                min_prompt_tokens=min_prompt_tokens)
    if stats is not None:
        _trunc.count(stats, res)
    if res.dropped:
        logger.warning("row %d: %d tokens and its scored step cannot fit max_length=%d: example dropped (counted)",
                       row, len(tok.input_ids), max_length)
        return None
    cut = tok.prompt_len - res.prompt_keep
    end = tok.spans[res.steps_keep - 1][1] if res.steps_keep else tok.prompt_len
    ids = list(tok.input_ids[: res.prompt_keep]) + list(tok.input_ids[tok.prompt_len:end])
    positions = [p - cut for p in tok.score_positions[: res.steps_keep]]
    return ids, res.prompt_keep, positions, res.steps_keep


def _log_truncation(stats, what: str, max_length: int) -> None:
    if stats is not None and (stats["examples_truncated"] or stats["examples_dropped"]):
        logger.warning("%s: %d of %d examples longer than max_length=%d: %d truncated (%d whole steps, %d labeled, "
                       "and %d prompt tokens cut), %d dropped", what, stats["examples_truncated"]
                       + stats["examples_dropped"], stats["examples"], max_length, stats["examples_truncated"],
                       stats["steps_dropped"], stats["labeled_steps_dropped"], stats["prompt_tokens_cut"],
                       stats["examples_dropped"])


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
        kept = _truncate_tokenized(tok, max_length, scored, truncation, min_prompt_tokens, stats, i)
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
    items = [_as_row_dict(s) for s in samples]
    pairs = [(d["prompt"], list(d["completions"] if "completions" in d else d["steps"])) for d in items]
    pos_id = neg_id = None
    if backend == "token":
        pos_id = token_id(tokenizer, positive_token, "positive_token")
        neg_id = token_id(tokenizer, negative_token, "negative_token")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    out: list[list[float]] = []
    try:
        for b in range(0, len(pairs), batch_size):
            toks = [fmt.tokenize(tokenizer, p, s) for p, s in pairs[b:b + batch_size]]
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


# =============================================================================================
# ORM
# =============================================================================================
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
            d = _as_row_dict(item)
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
        kept = _truncate_tokenized(tok, max_length, [len(tok.spans) - 1], truncation, min_prompt_tokens, stats, i)
        if kept is None:
            continue
        ids, prompt_len, _, _ = kept
        labels = [float(IGNORE_INDEX)] * len(ids)
        for j in ([len(ids) - 1] if last_token_only else range(prompt_len, len(ids))):
            labels[j] = row.label
        feats.append({"input_ids": ids, "labels": labels})
    return feats


class ORMTrainer(ReliableTrainerMixin, _RewardConfigOnSave, Trainer):
    """Train an outcome reward model: a 1-logit token head, BCE on completion tokens (prompt masked)."""

    reward_type = "outcome"
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: ORMConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, data_collator=None, **kwargs):
        from transformers import AutoModelForTokenClassification

        if args is None:
            args = ORMConfig(output_dir="orm-output")
        if not isinstance(args, ORMConfig):
            raise TypeError(f"args must be an ORMConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        tokenizer = _tokenizer_for(model, processing_class, args.trust_remote_code)
        self.step_format = args.step_format
        model = _load_model(model, AutoModelForTokenClassification, args, tokenizer, num_labels=1)
        _require_token_classifier(model, "an outcome model")
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError(f"an outcome model needs num_labels=1 (one logit per token), got "
                             f"{model.config.num_labels}")
        model = _apply_peft(model, args, "TOKEN_CLS", [h] if (h := find_head_name(model)) else None)

        self.truncation_stats: dict[str, dict[str, int]] = {}

        def feats(data, split):
            stats = _trunc.empty_stats()
            out = build_orm_features(read_outcome_rows(_rows_of(data)), tokenizer, self.step_format,
                                     last_token_only=args.last_token_only, max_length=args.max_length,
                                     truncation=args.truncation, min_prompt_tokens=args.min_prompt_tokens, stats=stats)
            return _ListDataset(_checked_features(out, stats, split, args.max_length, self.truncation_stats))

        super().__init__(model=model, args=args, train_dataset=feats(train_dataset, "train"),
                         eval_dataset=feats(eval_dataset, "eval") if eval_dataset is not None else None,
                         processing_class=tokenizer,
                         data_collator=data_collator or RewardDataCollator(_pad_id(tokenizer)), **kwargs)
        self.can_return_loss = True
        self.label_names = ["labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        loss = masked_bce_loss(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss

    def reward_settings(self) -> dict[str, Any]:
        return {"backend": "head", "reduce": self.args.reduce, "step_format": self.step_format.to_dict(),
                "output": "prob", "max_length": self.args.max_length}


# =============================================================================================
# Bradley-Terry (on TRL's RewardTrainer)
# =============================================================================================
@dataclass
class BTRewardConfig(_AdapterArgs, RewardConfig):
    """``trl.RewardConfig`` plus LoRA / quantized-loading fields and the step format recorded on save."""

    step_separator: str = field(default="\n", metadata={"help": "Step separator recorded in reward_config.json "
                                                                "(used when the model scores steps)."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag recorded on save."})
    final_separator: bool = field(default=True, metadata={"help": "Whether the last step ends with the separator."})

    def __post_init__(self) -> None:
        StepFormat(separator=self.step_separator, tag=self.step_tag, final_separator=self.final_separator)
        self._check_adapter_args()
        super().__post_init__()

    @property
    def step_format(self) -> StepFormat:
        return StepFormat(separator=self.step_separator, tag=self.step_tag, final_separator=self.final_separator)


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


class BTRewardTrainer(ReliableTrainerMixin, _RewardConfigOnSave, RewardTrainer):
    """``trl.RewardTrainer`` (Bradley-Terry, optional ``margin`` column) that saves a loadable reward model.

    Accepts TRL preference datasets (``chosen``/``rejected``, optional ``prompt`` and
    ``margin``), or lists of :class:`~reward_models.types.PreferencePair` / dicts.
    """

    reward_type = "bradley_terry"

    def __init__(self, model, args: BTRewardConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, **kwargs):
        if args is None:
            args = BTRewardConfig(output_dir="bt-output")
        if not isinstance(args, BTRewardConfig):
            raise TypeError(f"args must be a BTRewardConfig, got {type(args).__name__}")
        self.step_format = args.step_format
        if args.use_peft and peft_config is None:
            peft_config = args.lora_config("SEQ_CLS", None)  # peft adds the 'score'/'classifier' head itself
        quant = args.quantization_config()
        if quant is not None and isinstance(model, (str, os.PathLike)):
            kwargs.setdefault("quantization_config", quant)
        if isinstance(model, (str, os.PathLike)):
            from reward_models.base import refuse_pickles

            refuse_pickles(model)
            args.model_init_kwargs = {**(args.model_init_kwargs or {}), "use_safetensors": True}
        train_dataset = self._as_dataset(train_dataset)
        eval_dataset = self._as_dataset(eval_dataset) if eval_dataset is not None else None
        for name, ds in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if ds is not None and hasattr(ds, "__len__") and len(ds) == 0:
                raise DataError("the dataset is empty", source=name)
        sizes = [len(d) if hasattr(d, "__len__") else None for d in (train_dataset, eval_dataset)]
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, peft_config=peft_config, **kwargs)
        # trl.RewardTrainer drops pairs longer than max_length; we refuse to lose data silently
        for name, size, ds in (("train", sizes[0], self.train_dataset), ("eval", sizes[1], self.eval_dataset)):
            if size is not None and hasattr(ds, "__len__") and len(ds) < size:
                raise DataError(f"{size - len(ds)} of {size} pairs tokenize to more than max_length={args.max_length} "
                                "tokens; raise max_length or shorten them (nothing is dropped silently)",
                                source=f"{name}_dataset")

    @staticmethod
    def _as_dataset(data):
        from datasets import Dataset

        if data is None or isinstance(data, Dataset):
            return data
        return Dataset.from_list(read_preference_rows(list(data)))

    def reward_settings(self) -> dict[str, Any]:
        # no "backend": BradleyTerryRewardModel has a single (head) layout and refuses unknown settings
        return {"step_format": self.step_format.to_dict(), "max_length": self.args.max_length}


__all__ = ["BTRewardConfig", "BTRewardTrainer", "IGNORE_INDEX", "LABEL_SCHEMES", "ORMConfig", "ORMTrainer",
           "OutcomeRow", "PRMConfig", "PRMTrainer", "RewardDataCollator", "StepRow", "build_orm_features",
           "build_prm_features", "convert_step_label", "find_head_name", "masked_bce_loss", "masked_step_loss",
           "predict_step_probs", "read_outcome_rows", "read_preference_rows", "read_step_rows",
           "resolve_label_scheme", "soft_cross_entropy", "step_targets", "token_pair_logits"]
