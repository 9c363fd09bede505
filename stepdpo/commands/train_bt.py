"""``stepdpo train-bt``: train a Bradley-Terry reward model on preference pairs (TRL RewardTrainer).

Launch::

    stepdpo train-bt --model_name_or_path tiny-gpt2 --dataset_name pairs.jsonl --output_dir outputs/bt
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/train_bt.py --config RECIPE.yaml
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from stepdpo.commands import common, reward_common

COMMAND = "train-bt"
logger = logging.getLogger(__name__)

DESCRIPTION = """\
Train a Bradley-Terry reward model: one scalar per text, trained so that the chosen
response of a pair scores above the rejected one (TRL's RewardTrainer, optional margin).
Data: preference pairs (hh-rlhf transcripts, prompt/chosen/rejected rows, chat messages)
or step pairs (Step-DPO data, `stepdpo build-pairs` output: the prompt and the steps
before the pair become the context, so the model learns to rank next steps).

Main options:
  --config FILE              a recipe (YAML keys = option names)
  --model_name_or_path NAME  base model: hub id, local folder, or tiny-gpt2
  --dataset_name SRC         file.jsonl | folder | hub dataset of pairs
  --eval_dataset_name SRC    held-out pairs: pairwise accuracy after training
  --output_dir DIR           the saved reward model (safetensors + reward_config.json)
  --use_peft, --max_steps, --learning_rate, --per_device_train_batch_size
  --dry_run                  8 pairs, 2 steps: checks a recipe end to end
"""

EPILOG = """\
example:
  stepdpo build-pairs --model_name_or_path outputs/sft --dataset_name arith:500 \\
      --reward_model checker:arith --output_file outputs/pairs.jsonl
  stepdpo train-bt --model_name_or_path tiny-gpt2 --dataset_name outputs/pairs.jsonl --output_dir outputs/bt
"""


@dataclass
class ScriptArguments(reward_common.RewardScriptArguments):
    _argument_group_name = "model and data (stepdpo train-bt)"


def make_parser(prog: str = "stepdpo train-bt"):
    from reward_models.training import BTRewardConfig

    parser = common.make_trl_parser((ScriptArguments, BTRewardConfig), prog, DESCRIPTION, EPILOG)
    # trl.RewardConfig turns bf16 on by default, which fails on machines without bf16 (CPU-only ones): default to
    # bf16 only where the accelerator has it (a recipe or --bf16 still decides)
    parser.set_defaults(bf16=common.bf16_available())
    return parser


def preference_pairs(data, step_format):
    """PreferencePairs from preference or step pairs (a step pair's context is prompt + prefix).

    >>> from reward_models.types import StepPair
    >>> from reward_models.steps import StepFormat
    >>> d = common.Data("x", items=[StepPair("Q: 1+2\\n", ["1+2=3"], "Answer: 3", "Answer: 4", is_final=True)])
    >>> p = preference_pairs(d, StepFormat())[0]
    >>> p.prompt, p.chosen
    ('Q: 1+2\\n1+2=3\\n', 'Answer: 3')
    """
    from reward_models.types import PreferencePair, StepPair

    out = list(data.of_type(PreferencePair))
    for p in data.of_type(StepPair):
        context = p.prompt + step_format.join(list(p.prefix_steps), complete=False)
        out.append(PreferencePair(prompt=context, chosen=p.chosen, rejected=p.rejected, margin=None,
                                  meta=dict(p.meta)))
    if not out:
        raise SystemExit(f"{data.source} holds no preference or step pairs to train a Bradley-Terry model on")
    return out


def main(script_args: ScriptArguments, training_args) -> dict:
    from reward_models.base import load_reward_model
    from reward_models.testing import tiny_sequence_classifier
    from reward_models.training import BTRewardTrainer

    if script_args.dry_run:
        reward_common.shrink_for_dry_run(script_args, training_args)
    fmt = training_args.step_format
    data = reward_common.read(script_args, fmt, training_args.seed)
    train = preference_pairs(data, fmt)
    evals = reward_common.read(script_args, fmt, training_args.seed, eval_=True)
    eval_pairs = preference_pairs(evals, fmt) if evals is not None else None

    def build_tiny(tok, seed, **spec):
        return tiny_sequence_classifier(tok, num_labels=1, seed=seed, **spec)

    model, tokenizer = reward_common.model_and_tokenizer(script_args, build_tiny, training_args.trust_remote_code,
                                             training_args.seed, training_args.output_dir)
    trainer = BTRewardTrainer(model=model, args=training_args, train_dataset=train, processing_class=tokenizer)
    summary = reward_common.train_and_save(trainer, training_args, COMMAND, train_pairs=len(train))
    summary.update(common.rejected_rows(data, evals))
    if trainer.accelerator.is_main_process:
        if eval_pairs:
            rm = load_reward_model(training_args.output_dir)
            chosen = rm.score([p.prompt for p in eval_pairs], [p.chosen for p in eval_pairs])
            rejected = rm.score([p.prompt for p in eval_pairs], [p.rejected for p in eval_pairs])
            acc = sum(c > r for c, r in zip(chosen, rejected)) / len(eval_pairs)
            summary["eval_pairwise_accuracy"] = acc
            common.write_json(f"{training_args.output_dir}/eval_metrics.json",
                         {"pairwise_accuracy": acc, "n_pairs": len(eval_pairs)})
        common.write_json(f"{training_args.output_dir}/stepdpo_train_bt.json",
                     {**summary, "log_history": trainer.state.log_history})
        common.print_summary(COMMAND, summary)
    return summary


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
