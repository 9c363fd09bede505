"""``stepdpo train``: Stepwise DPO training of a policy on step pairs (or on pairs it builds).

Launch (one process on CPU, or any accelerate config)::

    accelerate launch --config_file configs/accelerate/cpu.yaml scripts/train_stepdpo.py \\
        --config configs/demo_stepdpo.yaml
    stepdpo train --config configs/demo_stepdpo.yaml --max_steps 20      # same, without accelerate

The options are the fields of :class:`ScriptArguments` (data and judge),
:class:`~stepdpo.config.StepwiseDPOConfig` (all of ``trl.DPOConfig`` plus the stepwise fields)
and ``trl.ModelConfig`` (policy, LoRA, 4/8-bit loading).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from stepdpo.commands import common

COMMAND = "train"
DRY_RUN_SFT_STEPS = 80  # with DRY_RUN_SFT_LR the tiny policy learns the format (and the 8 dry-run problems)
DRY_RUN_SFT_LR = 5e-3
logger = logging.getLogger(__name__)

DESCRIPTION = """\
Train a policy with Stepwise DPO.

The training data is either
  * step pairs (a JSONL from `stepdpo build-pairs`, Step-DPO data such as
    xinlai/Math-Step-DPO-10K, or our StepPair JSONL): trained on directly, or
  * problems (the `arith` task, step-by-step samples, or rows with a prompt column):
    the trainer samples solutions from the policy, asks the judge (--reward_model)
    where the first wrong step is, resamples from the last good prefix and trains on
    the resulting (prefix, good step, bad step) pairs, for --rounds rounds.

Main options (all can also be set in the --config YAML, command line wins):
  --config FILE              a recipe from configs/ (YAML keys = option names)
  --model_name_or_path NAME  policy: hub id, local folder, or tiny-gpt2 (offline test model)
  --dataset_name SRC         arith[:N] | file.jsonl | folder | hub dataset
  --reward_model SPEC        judge: checker:arith | self | a saved reward-model folder
  --output_dir DIR           where the trained policy (or LoRA adapter) is saved
  --max_steps N / --num_train_epochs N, --learning_rate, --beta, --loss_type
  --pair_strategy first_error|per_depth, --num_candidates K, --rounds R
  --use_peft --lora_r 16 [--load_in_4bit]   LoRA (QLoRA with 4-bit loading, CUDA only)
  --dry_run                  8 examples, 2 optimizer steps: checks a recipe end to end
"""

EPILOG = """\
examples:
  stepdpo train --config configs/demo_stepdpo.yaml
  stepdpo train --model_name_or_path tiny-gpt2 --dataset_name arith:64 \\
      --reward_model checker:arith --output_dir outputs/try --max_steps 10
  accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml \\
      scripts/train_stepdpo.py --config configs/qwen2.5-math-1.5b_stepdpo_math_zero3.yaml
"""


@dataclass
class ScriptArguments(common.ProblemArguments):
    """What to train on and who judges steps."""

    _argument_group_name = "data and judge (stepdpo train)"

    reward_model: str = field(default="self", metadata={
        "help": "Judge used to build pairs from problems: 'checker:arith' (exact checker of the arithmetic "
                "task), 'self' (the policy's own Yes/No verification prompt) or a folder saved by "
                "`stepdpo train-prm/train-orm/train-bt` (any reward model with reward_config.json)."})
    check_answers: bool | None = field(default=None, metadata={
        "help": "Use the gold answers: only wrong solutions are searched for errors, and a chosen step whose rollout "
                "reaches the answer is preferred (chosen_rule). Default: when the data has answers (the arith task, "
                "or answer_column); true requires them; false ignores them."})
    sft_warmup_steps: int = field(default=0, metadata={
        "help": "First fine-tune the policy for this many steps on gold step-by-step solutions (the arith task, "
                "or samples whose steps are all labeled good), so that a fresh model writes well-formed steps."})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the warm-up."})
    sft_dataset_name: str | None = field(default=None, metadata={
        "help": "Gold solutions for the warm-up, if not those of dataset_name (e.g. arith:4000 while pairs are "
                "built from arith:400: a policy that memorized its pair problems would make few mistakes)."})
    sft_batch_size: int = field(default=64, metadata={"help": "Batch size of the warm-up."})
    dry_run: bool = field(default=False, metadata={
        "help": "Check the whole recipe quickly: at most 8 examples, a short warm-up (80 steps at a high rate), "
                "2 optimizer steps, 1 round, no checkpoints."})


def make_parser(prog: str = "stepdpo train"):
    from trl import ModelConfig

    from stepdpo.config import StepwiseDPOConfig

    return common.make_trl_parser((ScriptArguments, StepwiseDPOConfig, ModelConfig), prog, DESCRIPTION, EPILOG)


def apply_dry_run(script_args: ScriptArguments, training_args) -> None:
    """Shrink a run to a smoke test (see ``--dry_run``)."""
    script_args.sft_warmup_steps = min(script_args.sft_warmup_steps, DRY_RUN_SFT_STEPS)
    script_args.sft_learning_rate = max(script_args.sft_learning_rate, DRY_RUN_SFT_LR)
    script_args.sft_dataset_name = None  # warm up on the dry run's own 8 problems, so some samples are right
    common.shrink_for_dry_run(script_args)
    common.shrink_training_for_dry_run(training_args)
    training_args.rounds = 1
    training_args.regenerate_every_steps = None
    training_args.num_candidates = min(training_args.num_candidates, 4)
    if training_args.sample_temperature == 0:  # a barely trained policy: sampled solutions have errors to find
        training_args.sample_temperature = 1.0
    if training_args.num_continuations is not None:
        training_args.num_continuations = min(training_args.num_continuations, 4)
    training_args.max_solution_steps = min(training_args.max_solution_steps, 4)
    training_args.sample_max_new_tokens = min(training_args.sample_max_new_tokens, 24)
    if training_args.save_pairs_to:  # keep everything a dry run writes inside its output_dir
        training_args.save_pairs_to = f"{training_args.output_dir}/pairs.jsonl"


def main(script_args: ScriptArguments, training_args, model_args) -> dict:
    """Load policy and data, build or read step pairs, train, save; returns a summary dict."""
    from trl import get_peft_config

    from reward_models.types import PreferencePair, StepPair, StepSample
    from stepdpo.trainer import StepwiseDPOTrainer

    if script_args.dry_run:
        apply_dry_run(script_args, training_args)
    name = model_args.model_name_or_path
    if not name:
        raise SystemExit("no policy given: set model_name_or_path (a hub id, a folder, or tiny-gpt2)")
    trust = bool(training_args.trust_remote_code)
    fmt = training_args.step_format
    data = common.read_data(script_args.dataset_name, split=script_args.dataset_split, config=script_args.dataset_config,
                       max_samples=script_args.max_samples, step_format=fmt,
                       prompt_column=script_args.prompt_column, answer_column=script_args.answer_column,
                       prompt_template=script_args.prompt_template, seed=training_args.seed,
                       skip_invalid=script_args.skip_invalid, rejects_path=script_args.rejects_path)
    if data.of_type(PreferencePair):
        raise SystemExit(f"{data.source} holds whole-response preference pairs: train a Bradley-Terry reward model "
                         "on them with `stepdpo train-bt`; Stepwise DPO needs step pairs or problems")
    if (script_args.dry_run and common.is_tiny(name) and not script_args.sft_warmup_steps
            and not data.of_type(StepPair) and data.of_type(StepSample)):
        # a freshly built tiny policy writes no steps worth judging: no pair could be built to check the recipe with
        script_args.sft_warmup_steps = DRY_RUN_SFT_STEPS
        logger.info("dry run with a fresh %s: a %d-step warm-up first, so that its steps can be judged", name,
                    DRY_RUN_SFT_STEPS)

    if script_args.sft_warmup_steps > 0 and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise SystemExit("sft_warmup_steps trains all weights and cannot run on a 4/8-bit model: warm up first "
                         "without quantization, then start from the saved sft_model folder")
    if common.is_tiny(name):  # saved first, then loaded like any checkpoint (a LoRA adapter then names its base)
        from reward_models.testing import tiny_causal_lm

        if model_args.load_in_4bit or model_args.load_in_8bit:
            logger.warning("%s: the tiny test model is never quantized; load_in_4bit/load_in_8bit ignored", name)
            model_args.load_in_4bit = model_args.load_in_8bit = False

        name = common.save_tiny_base(name, tiny_causal_lm, training_args.output_dir, training_args.seed)
    name = common.absolute_if_local(name)
    tokenizer = common.load_tokenizer(name, trust, model_args.model_revision)
    model = common.load_causal_lm(name, model_args, trust_remote_code=trust, seed=training_args.seed)
    if script_args.sft_warmup_steps > 0:
        sft_data = data
        if script_args.sft_dataset_name:
            sft_data = common.read_data(script_args.sft_dataset_name, split=script_args.dataset_split,
                                   max_samples=script_args.max_samples, step_format=fmt, seed=training_args.seed,
                                   skip_invalid=script_args.skip_invalid)
        model = warm_up(model, tokenizer, sft_data, script_args, training_args)
        # the warmed-up policy is the starting point: the reference, and the base of a LoRA adapter
        name = os.path.abspath(f"{training_args.output_dir}/sft_model")  # saved just below
        if training_args.distributed_state.is_main_process:
            model.save_pretrained(name, safe_serialization=True)
            tokenizer.save_pretrained(name)
        training_args.distributed_state.wait_for_everyone()
        model.name_or_path = model.config._name_or_path = name
    peft_config = get_peft_config(model_args)
    ref_model = None
    needs_ref = not training_args.precompute_ref_log_probs or training_args.rounds > 1
    if peft_config is None and needs_ref:
        # a second copy loaded like the first (works under ZeRO-3, unlike copying a sharded model)
        ref_model = common.load_causal_lm(name, model_args, trust_remote_code=trust, seed=training_args.seed)

    kwargs: dict = {}
    pairs = data.of_type(StepPair)
    if pairs:
        kwargs["train_dataset"] = pairs
        mode = f"{len(pairs)} step pairs from {data.source}"
    else:
        prompts, answers = common.unique_prompts(data.prompts, data.answers)
        kwargs["prompts"] = prompts
        kwargs["reward_model"] = common.reward_model_from_spec(script_args.reward_model, step_format=fmt)
        if common.use_answers(script_args.check_answers, answers, data.checker):
            kwargs["answers"], kwargs["answer_checker"] = answers, data.checker
        mode = f"pairs built from {len(prompts)} problems of {data.source}, judge {script_args.reward_model}"
    logger.info("stepdpo train: %s", mode)

    trainer = StepwiseDPOTrainer(model=model, ref_model=ref_model, args=training_args, processing_class=tokenizer,
                                 peft_config=peft_config, **kwargs)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    summary = {"command": COMMAND, "data": mode, "output_dir": training_args.output_dir,
               "train_loss": float(result.training_loss), "global_step": int(trainer.state.global_step),
               "pair_stats": trainer.pair_stats, "sampling": sampling_throughput(trainer.pair_stats),
               "dry_run": script_args.dry_run, **common.rejected_rows(data)}
    if trainer.accelerator.is_main_process:
        common.write_json(f"{training_args.output_dir}/stepdpo_train.json",
                     {**summary, "log_history": trainer.state.log_history})
        common.print_summary(COMMAND, {k: v for k, v in summary.items() if k != "pair_stats"})
    return summary


def sampling_throughput(pair_stats: list[dict]) -> list[dict]:
    """Per round of pairs built from problems: where the policy sampled, the tokens it generated
    (all processes) and the seconds the slowest process spent in ``generate``."""
    out = []
    for st in pair_stats:
        if "generated_tokens" in st:
            secs = st["generate_seconds"]
            out.append({"round": st["round"], "devices": st["devices"], "generated_tokens": st["generated_tokens"],
                        "generate_seconds": secs, "build_seconds": st["build_seconds"],
                        "tokens_per_second": round(st["generated_tokens"] / secs, 1) if secs else None})
    return out


def warm_up(model, tokenizer, data, script_args: ScriptArguments, training_args):
    """Supervised warm-up on the data's gold solutions (:func:`stepdpo.sft.train_sft`)."""
    from reward_models.types import StepSample
    from stepdpo.sft import train_sft

    gold = [s for s in data.of_type(StepSample) if s.labels is None or all(v >= 0.5 for v in s.labels)]
    if data.is_arith and not gold:
        gold = data.of_type(StepSample)
    if not gold:
        raise SystemExit(f"sft_warmup_steps needs step-by-step solutions; {data.source} holds none with all "
                         "steps good")
    logger.info("supervised warm-up: %d steps on %d gold solutions", script_args.sft_warmup_steps, len(gold))
    trainer = train_sft(model, tokenizer, gold, output_dir=f"{training_args.output_dir}/sft_warmup",
                        step_format=training_args.step_format, max_steps=script_args.sft_warmup_steps,
                        learning_rate=script_args.sft_learning_rate, seed=training_args.seed,
                        batch_size=min(script_args.sft_batch_size, len(gold)), bf16=bool(training_args.bf16),
                        fp16=bool(training_args.fp16))
    return trainer.accelerator.unwrap_model(trainer.model)


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
