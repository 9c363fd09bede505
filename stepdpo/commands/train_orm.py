"""``stepdpo train-orm``: train an outcome reward model (one score per whole solution).

Launch::

    stepdpo train-orm --model_name_or_path tiny-gpt2 --dataset_name arith:400 --output_dir outputs/orm
    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/train_orm.py --config RECIPE.yaml
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from stepdpo.commands import common, reward_common

COMMAND = "train-orm"
logger = logging.getLogger(__name__)

DESCRIPTION = """\
Train an outcome reward model (ORM): it reads a whole solution and says how likely it
is correct. Data: solutions with an outcome label, or step-labeled solutions (a
solution is as good as its worst step), in any format reward_models.data reads.
The model is a one-logit token head trained with BCE on the solution's tokens
(or on its last token with --last_token_only).

Main options:
  --config FILE              a recipe (YAML keys = option names)
  --model_name_or_path NAME  base model: hub id, local folder, or tiny-gpt2
  --dataset_name SRC         arith[:N] | file.jsonl | folder | hub dataset
  --eval_dataset_name SRC    held-out labeled data, evaluated after training
  --output_dir DIR           the saved reward model (safetensors + reward_config.json)
  --last_token_only, --reduce last|mean, --use_peft, --max_steps, --learning_rate
  --dry_run                  8 examples, 2 steps: checks a recipe end to end
"""

EPILOG = """\
example:
  stepdpo train-orm --model_name_or_path tiny-gpt2 --dataset_name arith:400 --output_dir outputs/orm \\
      --max_steps 200 --learning_rate 1e-3
"""


@dataclass
class ScriptArguments(reward_common.RewardScriptArguments):
    _argument_group_name = "model and data (stepdpo train-orm)"


def make_parser(prog: str = "stepdpo train-orm"):
    from reward_models.training import ORMConfig

    return common.make_trl_parser((ScriptArguments, ORMConfig), prog, DESCRIPTION, EPILOG)


def main(script_args: ScriptArguments, training_args) -> dict:
    from reward_models.testing import tiny_token_classifier
    from reward_models.training import ORMTrainer

    def build_tiny(tok, seed, **spec):
        return tiny_token_classifier(tok, num_labels=1, seed=seed, **spec)

    return reward_common.train_step_model(script_args, training_args, ORMTrainer, build_tiny, "ORM", COMMAND)


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
