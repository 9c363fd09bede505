"""Bradley-Terry reward model: a scalar head at the last token (seeds 001/002).

The model is an ``AutoModelForSequenceClassification`` with ``num_labels=1`` - exactly what
TRL's ``RewardTrainer`` saves - so a RewardTrainer output directory loads as is (no
``reward_config.json`` needed). Texts are laid out as TRL lays them out for training:
``prompt + completion + eos`` tokenized as one string (``append_eos``), right-padded with the
model's pad id so the head reads the last real token.

Scores are raw rewards ``R(x, y)`` (the BT loss is ``-log sigmoid(R(x, y_w) - R(x, y_l))``).
:meth:`BradleyTerryRewardModel.score_steps` scores each step prefix as a partial response.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from reward_models import hf_utils
from reward_models.base import (
    CONFIG_NAME,
    PretrainedRewardModel,
    register_reward_model,
    saved_settings,
    write_reward_config,
)
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat
from reward_models.types import DataError

logger = logging.getLogger(__name__)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None):
    """Mean ``-log sigmoid(r_chosen - r_rejected - margin)`` (seed 002; TRL's optional margin).

    >>> round(bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item(), 4)
    0.1269
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return torch.nn.functional.softplus(-diff).mean()


@register_reward_model("bradley_terry")
class BradleyTerryRewardModel(PretrainedRewardModel):
    """A scalar (pairwise-trained) reward model.

    Args:
        model_name_or_path: a saved directory or a TRL ``RewardTrainer`` output directory.
        device: default CUDA when available, else CPU.
        append_eos: end each text with the EOS token, as TRL's RewardTrainer does in training.
        step_format: how :meth:`score_steps` lays out step prefixes.
        max_length: longest sequence accepted (also capped by the model's positions).
        batch_size: texts per forward pass.
    """

    score_scale = "raw"  # a pairwise-trained reward: only differences mean something

    def __init__(self, model_name_or_path: str | os.PathLike, device: str | None = None, *, tokenizer=None,
                 dtype=None, torch_dtype=None, trust_remote_code: bool = False,
                 model_kwargs: dict[str, Any] | None = None, **settings: Any):
        from transformers import AutoModelForSequenceClassification

        path = Path(model_name_or_path)
        saved = saved_settings(path, "bradley_terry")
        archs = hf_utils.architectures(path)
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ValueError(f"{path} holds a {archs[0]}, not a ...ForSequenceClassification model with a scalar "
                             "head (what a Bradley-Terry reward model / TRL RewardTrainer saves)")
        saved.update(settings)
        model = hf_utils.load_hf_model(AutoModelForSequenceClassification, path, device=device,
                                  dtype=dtype or torch_dtype, trust_remote_code=trust_remote_code,
                                  **(model_kwargs or {}))
        tok = tokenizer if tokenizer is not None else hf_utils.load_tokenizer(path, trust_remote_code=trust_remote_code)
        try:
            self._setup(model, tok, where=str(path), **saved)
        except TypeError as e:
            raise DataError(f"bad setting: {e}", source=str(path / CONFIG_NAME)) from None
        self.name_or_path = str(model_name_or_path)

    @classmethod
    def from_model(cls, model, tokenizer, **settings: Any) -> BradleyTerryRewardModel:
        """Wrap an in-memory sequence-classification model (not copied) and its tokenizer."""
        obj = cls.__new__(cls)
        obj._setup(model, tokenizer, where=type(model).__name__, **settings)
        obj.name_or_path = getattr(model, "name_or_path", None)
        return obj

    def _setup(self, model, tokenizer, *, where: str, append_eos: bool = True, step_format=None,
               max_length: int | None = None, batch_size: int = 16, aggregation: str = "last") -> None:
        hf_utils.check_tokenizer(model, tokenizer, where)
        n = int(getattr(model.config, "num_labels", 1))
        if n != 1:
            raise ValueError(f"{where}: a Bradley-Terry model needs a scalar head (num_labels=1), got {n}")
        if isinstance(step_format, dict):
            step_format = StepFormat.from_dict(step_format)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model, self.tokenizer = model, tokenizer
        self.append_eos = bool(append_eos)
        self.step_format = step_format or DEFAULT_STEP_FORMAT
        self.batch_size = batch_size
        self.aggregation = aggregation
        self.device = hf_utils.model_device(model)
        self.max_length = hf_utils.max_positions(model, max_length)
        self._max_length_setting = max_length
        # pad with the id the model pools by (the last token that is not the config's pad id)
        self.pad_token_id = model.config.pad_token_id

    def _text(self, prompt: str, completion: str) -> str:
        text = prompt + completion
        eos = self.tokenizer.eos_token
        if self.append_eos and eos and not text.endswith(eos):
            text += eos
        return text

    def score(self, prompts, completions) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        return self.score_texts([self._text(p, c) for p, c in zip(prompts, completions)])

    def score_texts(self, texts: list[str], owner: list[int] | None = None) -> list[float]:
        """Rewards of full texts (already laid out), batched; ``owner[k]`` names text k's solution in errors."""
        seqs = [list(self.tokenizer(t)["input_ids"]) for t in texts]
        hf_utils.check_lengths([len(s) for s in seqs], self.max_length, index=owner)
        # without a pad id the model cannot find the last token of a padded row: run rows alone
        size = self.batch_size if self.pad_token_id is not None else 1
        out: list[float] = []
        with hf_utils.scoring_mode(self.model):
            for idx in hf_utils.batches(len(seqs), size):
                ids, mask = hf_utils.pad_right([seqs[i] for i in idx], self.pad_token_id or 0)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                out.extend(logits[:, 0].float().cpu().double().tolist())
        return out

    def score_steps(self, prompts, steps) -> list[list[float]]:
        """Reward of each step prefix ``prompt + steps[:j+1]`` (all prefixes batched together)."""
        prompts, steps = list(prompts), [list(s) for s in steps]
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")
        texts, owner = [], []
        for i, (p, st) in enumerate(zip(prompts, steps)):
            for j in range(len(st)):
                try:
                    texts.append(self._text(p, self.step_format.join(st[: j + 1], complete=j == len(st) - 1)))
                except DataError as e:
                    raise e.at(row=i) from None
                owner.append(i)
        flat = self.score_texts(texts, owner) if texts else []
        out, k = [], 0
        for st in steps:
            out.append(flat[k:k + len(st)])
            k += len(st)
        return out

    def save(self, path: str | os.PathLike) -> None:
        hf_utils.save_hf(self.model, self.tokenizer, path)
        write_reward_config(path, "bradley_terry", append_eos=self.append_eos, step_format=self.step_format,
                            max_length=self._max_length_setting, batch_size=self.batch_size,
                            aggregation=self.aggregation)

    def __repr__(self) -> str:
        return f"BradleyTerryRewardModel(model={getattr(self, 'name_or_path', None)!r})"


__all__ = ["BradleyTerryRewardModel", "bradley_terry_loss"]
