"""``BTRewardConfig``: the arguments of :class:`~reward_models.bt_trainer.BTRewardTrainer`.

``trl.RewardConfig`` plus LoRA / quantized loading (:class:`~reward_models.trainer_utils.AdapterArgs`)
and the step format recorded in ``reward_config.json`` on save.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig

from reward_models.hf_utils import current_checkpointing_names
from reward_models.steps import StepFormat
from reward_models.trainer_utils import AdapterArgs


@dataclass
class BTRewardConfig(AdapterArgs, RewardConfig):
    """``trl.RewardConfig`` plus LoRA / quantized-loading fields and the step format recorded on save."""

    step_separator: str = field(default="\n", metadata={"help": "Step separator recorded in reward_config.json "
                                                                "(used when the model scores steps)."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag recorded on save."})
    final_separator: bool = field(default=True, metadata={"help": "Whether the last step ends with the separator."})

    def __post_init__(self) -> None:
        StepFormat(separator=self.step_separator, tag=self.step_tag, final_separator=self.final_separator)
        self._check_adapter_args()
        current_checkpointing_names(self)  # TRL's default gradient_checkpointing=True: no FutureWarning
        super().__post_init__()

    @property
    def step_format(self) -> StepFormat:
        return StepFormat(separator=self.step_separator, tag=self.step_tag, final_separator=self.final_separator)


__all__ = ["BTRewardConfig"]
