"""``stepdpo build-pairs``: sample from a policy, judge the steps, write step-level pairs (JSONL).

Launch::

    stepdpo build-pairs --model_name_or_path tiny-gpt2 --dataset_name arith:64 \\
        --reward_model checker:arith --output_file outputs/pairs.jsonl
    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/build_pairs.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/build_pairs.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml --num_processes 2 scripts/build_pairs.py ...

With several processes each samples and judges its own slice of the problems on its own device;
the pairs are gathered in problem order and written once, by the main process.

The pairs train a policy later with ``stepdpo train --dataset_name outputs/pairs.jsonl``.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stepdpo import distributed as dist
from stepdpo.commands import common

COMMAND = "build-pairs"
logger = logging.getLogger(__name__)

DESCRIPTION = """\
Build step-level preference pairs from a policy's own samples.

For every problem the policy writes its solution step by step (greedy by default: the errors
it actually makes); the judge (--reward_model) scores each step. 'first_error' (Step-DPO): at
the first step judged bad, --num_continuations rollouts at --rollout_temperature are sampled
from the last good prefix; with --check_answers a step whose rollout reaches the gold answer is
preferred as 'chosen' (--chosen_rule), else the best step the judge accepts; the bad step is
'rejected'. 'per_depth': at each depth, the best and worst of K candidate steps.
Pairs are written as JSONL (every field) or in the Step-DPO column layout.

Main options:
  --config FILE              a recipe (YAML keys = option names)
  --model_name_or_path NAME  policy: hub id, local folder, or tiny-gpt2
  --dataset_name SRC         problems: arith[:N] | file.jsonl | hub dataset (+ --prompt_column)
  --reward_model SPEC        checker:arith | self | a saved reward-model folder
  --output_file FILE         where the pairs go (default pairs.jsonl)
  --pair_strategy, --num_candidates, --score_threshold, --max_solution_steps
"""

EPILOG = """\
example:
  stepdpo build-pairs --model_name_or_path outputs/sft --dataset_name arith:500 \\
      --reward_model checker:arith --num_candidates 8 --output_file outputs/pairs.jsonl
"""


@dataclass
class ScriptArguments(common.ProblemArguments, common.RunArguments):
    """Problems, judge and output of pair building."""

    _argument_group_name = "data, judge and output (stepdpo build-pairs)"

    reward_model: str = field(default="self", metadata={
        "help": "Judge: 'checker:arith', 'self' (the policy's Yes/No verification prompt) or a saved reward-model "
                "folder."})
    check_answers: bool | None = field(default=None, metadata={
        "help": "Use the gold answers: only wrong solutions are searched for errors, and a chosen step whose rollout "
                "reaches the answer is preferred (chosen_rule). Default: when the data has answers (the arith task, "
                "or answer_column); true requires them; false ignores them."})
    output_file: str = field(default="pairs.jsonl", metadata={"help": "Output JSONL file."})
    output_format: str = field(default="jsonl", metadata={
        "help": "'jsonl' (every StepPair field, read back by `stepdpo train`) or 'step_dpo' (prompt, "
                "initial_reason_steps, chosen, rejected)."})
    prompts_per_batch: int = field(default=64, metadata={"help": "Problems handled per pair-building call."})
    step_separator: str = field(default="\n", metadata={"help": "Text that ends every step."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag after each step."})
    pair_strategy: str = field(default="first_error", metadata={"help": "'first_error' or 'per_depth'."})
    num_candidates: int = field(default=4, metadata={"help": "K: solutions per problem / candidates per group."})
    score_threshold: float = field(default=0.5, metadata={
        "help": "A step is good when its score is at least this probability (a judge scoring log-odds, such as a "
                "plain model folder's Yes/No verification, compares with log(t/(1-t)))."})
    min_pair_margin: float = field(default=0.0, metadata={"help": "Smallest chosen-minus-rejected score."})
    max_uncertainty: float | None = field(default=None, metadata={"help": "Drop pairs the ensemble disagrees on."})
    max_solution_steps: int = field(default=8, metadata={"help": "Step limit of sampled solutions."})
    sample_max_new_tokens: int = field(default=64, metadata={"help": "Token limit of one step."})
    sample_temperature: float = field(default=0.0, metadata={
        "help": "Temperature of the solutions searched for errors (0 = greedy)."})
    num_continuations: int = field(default=8, metadata={"help": "Rollouts from each error's correct prefix."})
    rollout_temperature: float = field(default=0.8, metadata={"help": "Temperature of the rollouts/candidates."})
    chosen_rule: str = field(default="prefer_verified", metadata={
        "help": "With check_answers: 'verified', 'prefer_verified' or 'judge' (see StepwiseDPOConfig)."})
    pairs_per_error: int = field(default=1, metadata={"help": "Pairs per error, one per distinct chosen step."})
    max_pairs_per_prompt: int | None = field(default=None, metadata={"help": "Cap on the pairs of one problem."})
    max_logp_gap: float | None = field(default=None, metadata={
        "help": "Drop pairs the policy already ranks right by more than this many nats."})
    sample_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    sample_batch_size: int = field(default=64, metadata={"help": "Sequences per generate call."})
    dry_run: bool = field(default=False, metadata={"help": "At most 8 problems and 2 candidates: a quick check."})


def make_parser(prog: str = "stepdpo build-pairs"):
    from trl import ModelConfig

    return common.make_trl_parser((ScriptArguments, ModelConfig), prog, DESCRIPTION, EPILOG)


def main(script_args: ScriptArguments, model_args) -> dict:
    from tqdm.auto import tqdm

    from reward_models.steps import StepFormat
    from stepdpo.pairs import build_step_pairs, judge_threshold, save_pairs, threshold_hint
    from stepdpo.sampling import StepSampler

    if script_args.output_format not in ("jsonl", "step_dpo"):
        raise SystemExit(f"output_format must be 'jsonl' or 'step_dpo', got {script_args.output_format!r}")
    common.shrink_for_dry_run(script_args, num_candidates=2, num_continuations=2, max_solution_steps=3,
                              sample_max_new_tokens=16)
    if script_args.dry_run:  # a barely trained policy: sampled solutions have errors
        script_args.sample_temperature = script_args.sample_temperature or 1.0
    name = common.policy_name(model_args)
    fmt = StepFormat(separator=script_args.step_separator, tag=script_args.step_tag)
    data, prompts, answers = common.read_problems(script_args, fmt, script_args.seed)
    tokenizer = common.load_tokenizer(name, script_args.trust_remote_code, model_args.model_revision)
    model = common.to_device(common.load_causal_lm(name, model_args, trust_remote_code=script_args.trust_remote_code, seed=script_args.seed))
    model.eval()
    judge = common.reward_model_from_spec(script_args.reward_model, policy=model, tokenizer=tokenizer, step_format=fmt)
    def sampler_at(temperature, seed):
        return StepSampler(model, tokenizer, fmt, max_new_tokens=script_args.sample_max_new_tokens, temperature=temperature,
                           top_p=script_args.sample_top_p, batch_size=script_args.sample_batch_size, seed=seed)

    sampler, roller = sampler_at(script_args.sample_temperature, script_args.seed), sampler_at(script_args.rollout_temperature, script_args.seed + 104729)
    options = {"rollout_sampler": roller}
    if script_args.pair_strategy == "first_error":
        options.update(num_continuations=script_args.num_continuations, chosen_rule=script_args.chosen_rule,
                       pairs_per_error=script_args.pairs_per_error, max_pairs_per_prompt=script_args.max_pairs_per_prompt,
                       max_logp_gap=script_args.max_logp_gap)
    check = common.use_answers(script_args.check_answers, answers, data.checker)
    # several processes: each samples and judges its own slice of the problems; the pairs are gathered in order
    dist.check_same([prompts, None if answers is None else [repr(x) for x in answers]], "problems",
                    "Every process must read the same dataset (same --dataset_name, --max_samples and --seed).")
    start, stop, _ = dist.shard_bounds(len(prompts), *dist.world())
    pairs, stats = [], Counter()
    idx = list(range(start, stop))
    bar = tqdm(total=len(idx), desc="building step pairs", unit="problem", disable=not dist.is_main_process())
    threshold = judge_threshold(judge, script_args.score_threshold)  # a probability, on the judge's scale
    for chunk in common.chunks(idx, script_args.prompts_per_batch):
        extra = {}
        if check:
            extra = {"answers": [answers[i] for i in chunk], "answer_checker": data.checker}
        res = build_step_pairs([prompts[i] for i in chunk], sampler, judge, strategy=script_args.pair_strategy,
                               k=script_args.num_candidates, threshold=threshold, min_margin=script_args.min_pair_margin,
                               max_steps=script_args.max_solution_steps, max_uncertainty=script_args.max_uncertainty, **extra,
                               **options)
        pairs.extend(res.pairs)
        stats.update(res.stats)
        bar.update(len(chunk))
        bar.set_postfix(pairs=len(pairs))
    bar.close()
    pairs = dist.gather(pairs)
    total = Counter()
    for part in dist.gather_object(dict(stats)):  # every process's counts, summed
        total.update(part)
    stats = total
    path = Path(script_args.output_file)
    summary = {"command": COMMAND, "problems": len(prompts), "pairs": len(pairs), "output_file": str(path),
               "processes": dist.world()[0], "stats": dict(stats), **common.rejected_rows(data)}
    if dist.is_main_process():  # one writer; the others return the same summary
        save_pairs(path, pairs, format=script_args.output_format, step_format=fmt)
        common.write_json(path.with_name(path.name + ".stats.json"), summary)
        common.print_summary(COMMAND, {k: v for k, v in summary.items() if k != "stats"} | {"outcomes": dict(stats)})
    dist.barrier()
    if not pairs:
        hint = threshold_hint(dict(stats), threshold, judge.score_scale)
        logger.warning("no pairs were built: %s (%s)", dict(stats),
                       hint or "sample more candidates, or change score_threshold")
    return summary


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
