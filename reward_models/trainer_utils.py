"""What the reward-model trainers share (PRM, ORM, Bradley-Terry and the implicit PRM).

* Config mixins: :class:`AdapterArgs` (LoRA and 4/8-bit loading fields, ``lora_config``,
  ``quantization_config``) and :class:`StepFormatArgs` (step format, ``max_length``,
  ``truncation``, ``trust_remote_code``).
* Model loading: :func:`tokenizer_for`, :func:`load_model` (safetensors only, optional
  quantization), :func:`require_token_classifier`, :func:`find_head_name`, :func:`apply_peft`.
* Features: :class:`RewardDataCollator`, :class:`ListDataset`, :func:`~reward_models.hf_utils.pad_id`,
  :func:`truncate_tokenized` (the truncation policy on one tokenized example) and
  :func:`checked_features` (log a split's truncation counts, refuse an empty split).
* Saving: :class:`RewardConfigOnSave`, the mixin that writes ``reward_config.json`` (and the
  arguments as JSON, not a pickle) with every save and checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from reward_models import hf_utils
from reward_models import truncation as _trunc
from reward_models.base import write_reward_config
from reward_models.losses import IGNORE_INDEX
from reward_models.steps import AUTO_SEPARATOR, SEPARATOR_CANDIDATES, StepFormat, choose_separator
from reward_models.types import DataError

logger = logging.getLogger(__name__)

HEAD_NAMES = ("classifier", "score", "v_head")
TRUNCATION_MODES = ("steps", "error")


# ---------------------------------------------------------------------------------------------
# Config mixins
# ---------------------------------------------------------------------------------------------
def _cuda_ready(what: str) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"{what} needs a CUDA GPU (bitsandbytes kernels); none is available here. "
                         "Train in full precision on this machine, or run on a CUDA machine.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(f"{what} needs the bitsandbytes package: pip install bitsandbytes") from None


@dataclass
class AdapterArgs:
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
class StepFormatArgs:
    """Step-format, length/truncation and ``trust_remote_code`` fields shared by the PRM, ORM and implicit configs."""

    step_separator: str = field(default=AUTO_SEPARATOR, metadata={
        "help": "Text after each step (StepFormat.separator). 'auto': '\\n', or when a training step contains it "
                "the first of '\\n\\n', '\\n\\n\\n' that none contains (logged, and saved with the model)."})
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
        """The step format; an ``auto`` separator reads as ``"\\n"`` until :meth:`resolve_separator`."""
        sep = SEPARATOR_CANDIDATES[0] if self.step_separator == AUTO_SEPARATOR else self.step_separator
        return StepFormat(separator=sep, tag=self.step_tag, final_separator=self.final_separator)

    def resolve_separator(self, steps: Iterable[str]) -> StepFormat:
        """Fix an ``auto`` separator from the training steps (see :func:`~reward_models.steps.choose_separator`)
        and return the step format."""
        if self.step_separator == AUTO_SEPARATOR:
            self.step_separator = choose_separator(steps)
            log = logger.info if self.step_separator == SEPARATOR_CANDIDATES[0] else logger.warning
            log("step_separator auto: %r%s (saved with the model; set step_separator to choose another)",
                self.step_separator, "" if self.step_separator == SEPARATOR_CANDIDATES[0]
                else ", because some training steps contain '\\n'")
        return self.step_format

    def _check_truncation_args(self) -> None:
        if self.max_length <= 0:
            raise ValueError("max_length must be positive")
        if self.truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {self.truncation!r}")
        if self.min_prompt_tokens < 0:
            raise ValueError("min_prompt_tokens must be >= 0")


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------
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


class ListDataset(torch.utils.data.Dataset):
    """A ``torch`` dataset over a list of already-built feature dicts."""

    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def _too_long(n_tokens: int, max_length: int, row: int) -> DataError:
    return DataError(f"tokenizes to {n_tokens} tokens, more than max_length={max_length}; raise max_length, shorten "
                     "the example or use truncation='steps' (nothing is cut silently)", row=row)


def truncate_tokenized(tok, max_length: int | None, scored: list[int], truncation: str, min_prompt_tokens: int,
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


def cap_max_length(args, model) -> None:
    """Lower ``args.max_length`` to the model's position table (logged): a longer example would index
    past it. Over-long examples then follow ``args.truncation`` and are counted."""
    limit = hf_utils.max_positions(model)
    if limit is not None and args.max_length > limit:
        logger.warning("max_length %d is more than the model's %d positions: using %d (longer examples follow "
                       "truncation=%r)", args.max_length, limit, limit, args.truncation)
        args.max_length = limit


def checked_features(feats: list, stats, split: str, max_length: int, into: dict) -> list:
    """Record/log the truncation counts of one split; refuse a split left empty."""
    into[split] = dict(stats)
    _log_truncation(stats, f"{split}_dataset", max_length)
    if not feats:
        raise DataError(f"no usable example: {stats['examples_dropped']} of {stats['examples']} cannot fit "
                        f"max_length={max_length}" if stats["examples"] else "the dataset is empty",
                        source=f"{split}_dataset")
    return feats


# ---------------------------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------------------------
def find_head_name(model) -> str | None:
    """Attribute name of a classification head (``classifier`` for GPT-2, ``score`` for Llama/Qwen)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in HEAD_NAMES:
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return name
    return None


def load_model(model, auto_cls, args, tokenizer, **kwargs):
    """Load ``model`` (a path) with ``auto_cls`` safely, or return the given model."""
    if isinstance(model, (str, os.PathLike)):
        from reward_models.hf_utils import safe_from_pretrained

        quant = args.quantization_config()
        extra = {"quantization_config": quant} if quant is not None else {}
        model = safe_from_pretrained(auto_cls, model, trust_remote_code=args.trust_remote_code, **kwargs, **extra)
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.load_in_4bit or args.load_in_8bit:
        logger.warning("load_in_4bit/load_in_8bit apply when the model is given as a path; the loaded model is "
                       "used as is")
    if getattr(model.config, "pad_token_id", None) is None and tokenizer is not None:
        model.config.pad_token_id = hf_utils.pad_id(tokenizer)
    return model


def require_token_classifier(model, what: str) -> None:
    """Refuse (``TypeError``) a model that is not ``*ForTokenClassification`` (under PEFT: its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__name__.endswith("ForTokenClassification"):
        raise TypeError(f"{what} needs a token-classification model (one score per token), got "
                        f"{type(base).__name__}: pass the model's directory to load it as "
                        "AutoModelForTokenClassification (a new head is added), or use backend='token' for a causal LM")


def apply_peft(model, args, task_type: str, modules_to_save: list[str] | None):
    """Wrap ``model`` in LoRA adapters (``args.lora_config``) when ``args.use_peft``; else return it unchanged."""
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


def config_or_default(args, cls, default_output_dir: str):
    """``args`` checked to be a ``cls`` (a default ``cls`` writing to ``default_output_dir`` when None)."""
    if args is None:
        return cls(output_dir=default_output_dir)
    if not isinstance(args, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise TypeError(f"args must be {article} {cls.__name__}, got {type(args).__name__}")
    return args


def trainer_inputs(args, cls, default_output_dir: str, model, processing_class, train_dataset):
    """What every step-model trainer starts from: its config (see :func:`config_or_default`) and the
    tokenizer (see :func:`tokenizer_for`); raises when there is no ``train_dataset``."""
    args = config_or_default(args, cls, default_output_dir)
    if train_dataset is None:
        raise ValueError("train_dataset is required")
    return args, tokenizer_for(model, processing_class, args.trust_remote_code)


def load_token_classifier(model, args, tokenizer, num_labels: int, what: str):
    """A token-classification model with ``num_labels`` labels per token (loaded when ``model`` is
    a path), with LoRA applied when ``args.use_peft`` (the head is trained fully)."""
    from transformers import AutoModelForTokenClassification

    model = load_model(model, AutoModelForTokenClassification, args, tokenizer, num_labels=num_labels)
    require_token_classifier(model, what)
    got = getattr(model.config, "num_labels", None)
    if got != num_labels:
        raise ValueError(f"{what} needs a model with num_labels={num_labels}, got num_labels={got}")
    return apply_peft(model, args, "TOKEN_CLS", [h] if (h := find_head_name(model)) else None)


def tokenizer_for(model, processing_class, trust_remote_code: bool):
    """``processing_class`` when given, else the tokenizer saved next to ``model`` (a path or a loaded model)."""
    if processing_class is not None:
        return processing_class
    from transformers import AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        return AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if path and os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    raise ValueError("pass processing_class=<tokenizer>: it cannot be found from the given model")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def _replace_pickled_args(output_dir: str, args) -> None:
    """Trainer pickles its arguments to ``training_args.bin``; keep them as JSON instead (no pickles on disk)."""
    from pathlib import Path

    pickled = Path(output_dir) / "training_args.bin"
    if pickled.exists():
        pickled.unlink()
    (Path(output_dir) / "training_args.json").write_text(args.to_json_string())


class RewardConfigOnSave:
    """Mixin: ``save_model`` (also used for every checkpoint) writes ``reward_config.json``."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)  # type: ignore[misc]
        output_dir = output_dir or self.args.output_dir  # type: ignore[attr-defined]
        if self.args.should_save:  # type: ignore[attr-defined]
            _replace_pickled_args(output_dir, self.args)  # type: ignore[attr-defined]
            write_reward_config(output_dir, self.reward_type, **self.reward_settings())

    def reward_settings(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


__all__ = ["HEAD_NAMES", "TRUNCATION_MODES", "AdapterArgs", "cap_max_length", "config_or_default", "trainer_inputs", "load_token_classifier", "ListDataset", "RewardConfigOnSave", "RewardDataCollator",
           "StepFormatArgs", "apply_peft", "checked_features", "find_head_name", "load_model",
           "require_token_classifier", "tokenizer_for", "truncate_tokenized"]
