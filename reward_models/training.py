"""Trainers for process (PRM), outcome (ORM) and Bradley-Terry reward models: the one import.

This module only re-exports; the code lives one concern per file (issue 15)::

    reward_models/losses.py         pure loss functions and IGNORE_INDEX (no trainer, no transformers)
    reward_models/rows.py           label parsing and row readers: convert_step_label, StepRow,
                                    read_step_rows, resolve_label_scheme, step_targets, OutcomeRow,
                                    read_outcome_rows, read_preference_rows, LABEL_SCHEMES
    reward_models/trainer_utils.py  what the trainers share: config mixins (AdapterArgs,
                                    StepFormatArgs), RewardDataCollator, model loading / PEFT,
                                    truncation of features, RewardConfigOnSave
    reward_models/prm_config.py     PRMConfig
    reward_models/prm_trainer.py    PRMTrainer, build_prm_features, build_verification_features,
                                    NextTokenCollator, predict_step_probs
    reward_models/orm_config.py     ORMConfig
    reward_models/orm_trainer.py    ORMTrainer, build_orm_features
    reward_models/bt_config.py      BTRewardConfig
    reward_models/bt_trainer.py     BTRewardTrainer (on trl.RewardTrainer)

TRL removed its ``PRMTrainer`` in 2026; :class:`PRMTrainer` is its maintained successor. Call shape::

    trainer = PRMTrainer(model="path/or/model", args=PRMConfig(output_dir="out"),
                         processing_class=tokenizer, train_dataset=rows)
    trainer.train()
    trainer.save_model("out/final")     # -> load_reward_model("out/final")

Saved directories hold safetensors weights (the adapter only with LoRA), the tokenizer and
a ``reward_config.json``; every ``checkpoint-N`` directory carries the same files.
"""

from reward_models.bt_config import BTRewardConfig
from reward_models.bt_trainer import BTRewardTrainer
from reward_models.losses import (
    IGNORE_INDEX,
    masked_bce_loss,
    masked_step_loss,
    soft_cross_entropy,
    token_pair_logits,
)
from reward_models.losses import weighted_next_token_loss as weighted_next_token_loss
from reward_models.orm_config import ORMConfig
from reward_models.orm_trainer import ORMTrainer, build_orm_features
from reward_models.prm_config import PRMConfig
from reward_models.prm_trainer import NextTokenCollator as NextTokenCollator
from reward_models.prm_trainer import PRMTrainer, build_prm_features, predict_step_probs
from reward_models.prm_trainer import build_verification_features as build_verification_features
from reward_models.rows import (
    LABEL_SCHEMES,
    OutcomeRow,
    StepRow,
    convert_step_label,
    read_outcome_rows,
    read_preference_rows,
    read_step_rows,
    resolve_label_scheme,
    step_targets,
)
from reward_models.trainer_utils import HEAD_NAMES as HEAD_NAMES
from reward_models.trainer_utils import TRUNCATION_MODES as TRUNCATION_MODES
from reward_models.trainer_utils import RewardDataCollator, find_head_name

# The same ``__all__`` as before the split; the ``X as X`` imports above keep the other public
# names this module used to define importable from here (they are not part of ``import *``).
__all__ = ["BTRewardConfig", "BTRewardTrainer", "IGNORE_INDEX", "LABEL_SCHEMES", "ORMConfig", "ORMTrainer",
           "OutcomeRow", "PRMConfig", "PRMTrainer", "RewardDataCollator", "StepRow", "build_orm_features",
           "build_prm_features", "convert_step_label", "find_head_name", "masked_bce_loss", "masked_step_loss",
           "predict_step_probs", "read_outcome_rows", "read_preference_rows", "read_step_rows",
           "resolve_label_scheme", "soft_cross_entropy", "step_targets", "token_pair_logits"]
