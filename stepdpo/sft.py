"""Supervised warm-up of a policy on step-by-step solutions, on TRL's ``SFTTrainer``.

Examples are tokenized exactly as the policy later generates: prompt ids, then each step's
piece (``step + separator``) tokenized on its own (:meth:`StepFormat.tokenize`), then EOS.
The pre-tokenized ``input_ids`` / ``completion_mask`` columns go to ``SFTTrainer``, which
then skips its own tokenization and computes the loss on the completion only.

>>> from reward_models.testing import tiny_tokenizer
>>> from reward_models.types import StepSample
>>> row = tokenize_sft_example(tiny_tokenizer(), StepSample("Q: 1+2\\n", ["1+2=3", "Answer: 3"]))
>>> sum(row["completion_mask"]) == len(row["input_ids"]) - row["completion_mask"].index(1)
True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat
from reward_models.types import StepSample

logger = logging.getLogger(__name__)


def tokenize_sft_example(tokenizer, sample: StepSample | dict, step_format: StepFormat | None = None,
                         add_eos: bool = True) -> dict[str, list[int]]:
    """``input_ids`` and ``completion_mask`` (1 on solution tokens and EOS) for one sample."""
    fmt = step_format or DEFAULT_STEP_FORMAT
    if isinstance(sample, dict):
        sample = StepSample(prompt=sample["prompt"], steps=sample["steps"])
    enc = fmt.tokenize(tokenizer, sample.prompt, sample.steps)
    ids = list(enc.input_ids) + ([tokenizer.eos_token_id] if add_eos else [])
    mask = [0] * enc.prompt_len + [1] * (len(ids) - enc.prompt_len)
    return {"input_ids": ids, "completion_mask": mask}


def sft_dataset(tokenizer, samples: Iterable[StepSample | dict], step_format: StepFormat | None = None):
    """A ``datasets.Dataset`` of pre-tokenized SFT examples (see :func:`tokenize_sft_example`)."""
    from datasets import Dataset

    rows = [tokenize_sft_example(tokenizer, s, step_format) for s in samples]
    if not rows:
        raise ValueError("no SFT examples given")
    return Dataset.from_list(rows)


def train_sft(model, tokenizer, samples, *, output_dir: str, step_format: StepFormat | None = None,
              max_steps: int = 700, learning_rate: float = 1e-3, batch_size: int = 64, seed: int = 0,
              report_to: str | list[str] = "none", **sft_kwargs: Any):
    """Fine-tune ``model`` on gold step-by-step ``samples`` with TRL's SFTTrainer; returns the trainer."""
    from trl import SFTConfig, SFTTrainer

    from reward_models.hf_utils import bf16_supported

    # TRL turns gradient checkpointing on by default; for small policies it only costs time
    # (transformers' current name: its deprecated alias `gradient_checkpointing` warns in every run)
    sft_kwargs.setdefault("activation_checkpointing", sft_kwargs.pop("gradient_checkpointing", False))
    # TRL also defaults to bf16, which on a CPU means bf16 autocast: slower there, and the autocast wrapper
    # stays on the returned model's forward, so it would score differently from the same model reloaded
    if not sft_kwargs.get("fp16"):
        sft_kwargs.setdefault("bf16", bf16_supported())
    args = SFTConfig(
        output_dir=output_dir, max_steps=max_steps, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, lr_scheduler_type="cosine", warmup_steps=min(50, max_steps // 10),
        logging_steps=max(1, max_steps // 20), save_strategy="no", report_to=report_to, seed=seed,
        completion_only_loss=True, use_cpu=not _cuda(), dataloader_num_workers=0, disable_tqdm=True,
        **sft_kwargs,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(tokenizer, samples, step_format),
                         processing_class=tokenizer)
    trainer.train()
    # drop the mixed-precision wrapper Accelerate put on model.forward: in memory the model then computes
    # exactly what it computes when reloaded from disk (fp32 unless it was loaded in another dtype)
    trainer.model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return trainer


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["sft_dataset", "tokenize_sft_example", "train_sft"]
