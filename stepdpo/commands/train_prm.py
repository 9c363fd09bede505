"""``stepdpo train-prm``: train a process reward model (a score for every step).

Launch::

    accelerate launch --config_file configs/accelerate/cpu.yaml scripts/train_prm.py --config configs/demo_prm.yaml
    stepdpo train-prm --config configs/qwen2.5-math-1.5b_prm_math_shepherd.yaml

The saved folder loads with ``reward_models.base.load_reward_model`` and plugs in as
``--reward_model`` of ``stepdpo train``, ``build-pairs``, ``evaluate`` and ``decode``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from stepdpo.commands import common, reward_common

COMMAND = "train-prm"
logger = logging.getLogger(__name__)

DESCRIPTION = """\
Train a process reward model (PRM): it reads every step of a solution and says how
likely the step is correct. Data: step-labeled solutions (PRM800K, Math-Shepherd,
TRL stepwise, ProcessBench, RLHFlow, the arith task with injected errors, or labels
from `stepdpo label`). The loss is read only at each step's end (or its tag token).

Backends: 'head' (a token-classification head on the base model), 'token' (the
base causal LM's logits of a good/bad token, e.g. '+'/'-', Math-Shepherd style) or
'verification' (a generative verifier: the causal LM learns to answer " Yes"/" No" to
a question per step with next-token loss, optionally also next-token loss on the
all-good solutions: --lm_loss_weight). Other kinds (a verifier LM scored by its token
probabilities, an implicit PRM) are in reward_models.likelihood / implicit_trainer.

Main options:
  --config FILE              a recipe (YAML keys = option names)
  --model_name_or_path NAME  base model: hub id, local folder, or tiny-gpt2
  --dataset_name SRC         arith[:N] | file.jsonl | folder | hub dataset
  --eval_dataset_name SRC    held-out labeled data: AUROC, ProcessBench-style F1, ECE after training
  --output_dir DIR           the saved reward model (safetensors + reward_config.json)
  --backend head|token|verification, --num_labels 2|3, --step_separator, --step_tag
  --use_peft --lora_r 16 [--load_in_4bit]   LoRA (QLoRA on CUDA)
  --dry_run                  8 examples, 2 steps: checks a recipe end to end
"""

EPILOG = """\
examples:
  stepdpo train-prm --config configs/demo_prm.yaml
  stepdpo train-prm --model_name_or_path tiny-gpt2 --dataset_name arith:400 --eval_dataset_name arith:100 \\
      --output_dir outputs/prm --max_steps 200 --learning_rate 1e-3
"""


@dataclass
class ScriptArguments(reward_common.RewardScriptArguments):
    _argument_group_name = "model and data (stepdpo train-prm)"


def make_parser(prog: str = "stepdpo train-prm"):
    from reward_models.training import PRMConfig

    return common.make_trl_parser((ScriptArguments, PRMConfig), prog, DESCRIPTION, EPILOG)


def main(script_args: ScriptArguments, training_args) -> dict:
    from reward_models.testing import tiny_causal_lm, tiny_token_classifier
    from reward_models.training import PRMTrainer

    def build_tiny(tok, seed, **spec):
        if training_args.backend in ("token", "verification"):
            return tiny_causal_lm(tok, seed=seed, **spec)
        return tiny_token_classifier(tok, num_labels=training_args.num_labels, seed=seed, **spec)

    return reward_common.train_step_model(script_args, training_args, PRMTrainer, build_tiny, "PRM", COMMAND)


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
