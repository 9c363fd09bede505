"""``BTRewardTrainer``: Bradley-Terry reward models on ``trl.RewardTrainer``.

Adds to TRL's trainer: lists of :class:`~reward_models.types.PreferencePair` / dicts as data
(:func:`~reward_models.rows.read_preference_rows`), safetensors-only loading, LoRA / quantized
loading from :class:`~reward_models.bt_config.BTRewardConfig`, a refusal to drop over-long pairs
silently, and a ``reward_config.json`` with every save so the result loads with
:func:`~reward_models.base.load_reward_model`.
"""

from __future__ import annotations

import os
from typing import Any

from trl import RewardTrainer

from reward_models.bt_config import BTRewardConfig
from reward_models.reliability import ReliableTrainerMixin
from reward_models.rows import read_preference_rows
from reward_models.trainer_utils import RewardConfigOnSave, config_or_default
from reward_models.types import DataError


class BTRewardTrainer(ReliableTrainerMixin, RewardConfigOnSave, RewardTrainer):
    """``trl.RewardTrainer`` (Bradley-Terry, optional ``margin`` column) that saves a loadable reward model.

    Accepts TRL preference datasets (``chosen``/``rejected``, optional ``prompt`` and
    ``margin``), or lists of :class:`~reward_models.types.PreferencePair` / dicts.
    """

    reward_type = "bradley_terry"

    def __init__(self, model, args: BTRewardConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, **kwargs):
        args = config_or_default(args, BTRewardConfig, "bt-output")
        self.step_format = args.step_format
        if args.use_peft and peft_config is None:
            peft_config = args.lora_config("SEQ_CLS", None)  # peft adds the 'score'/'classifier' head itself
        quant = args.quantization_config()
        if quant is not None and isinstance(model, (str, os.PathLike)):
            kwargs.setdefault("quantization_config", quant)
        if isinstance(model, (str, os.PathLike)):
            from reward_models.safety import refuse_pickles

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


__all__ = ["BTRewardTrainer"]
