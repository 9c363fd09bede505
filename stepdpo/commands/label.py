"""``stepdpo label``: Monte-Carlo step labels (Math-Shepherd style) from policy rollouts.

Launch::

    stepdpo label --model_name_or_path outputs/sft --dataset_name arith:200 --output_file outputs/mc.jsonl
    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/label.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/label.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml --num_processes 2 scripts/label.py \
        --model_name_or_path tiny-gpt2 --dataset_name arith:12 --output_file outputs/mc.jsonl --dry_run

Under several processes each one labels its own shard of the solutions (rollouts are batched
and seeded per process, so sampled labels can differ from a one-process run); the main process
writes every solution once, in input order, and ``processes`` in the ``.stats.json`` says how
many took part.

The output JSONL trains a PRM: ``stepdpo train-prm --dataset_name outputs/mc.jsonl``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stepdpo import distributed as dist
from stepdpo.commands import common

COMMAND = "label"
logger = logging.getLogger(__name__)

DESCRIPTION = """\
Label every step of step-by-step solutions without human annotation: from each
prefix (the steps up to and including step i) the policy writes N completions; a
checker says which reach the right answer. 'hard' labels: 1 when any completion is
right; 'soft': the fraction that is. Existing labels are replaced (and compared with
the new ones when present, e.g. the arith task's injected-error labels).

Main options:
  --config FILE              a recipe (YAML keys = option names)
  --model_name_or_path NAME  the policy that completes prefixes (hub id, folder, tiny-gpt2)
  --dataset_name SRC         solutions: arith[:N] (with injected errors) | file.jsonl | hub dataset
  --checker arith|numeric    arith: the task's exact checker; numeric: final number = gold answer
  --n_rollouts N, --mode hard|soft, --output_file FILE
"""

EPILOG = """\
example:
  stepdpo label --model_name_or_path outputs/sft --dataset_name arith:200 --n_rollouts 8 \\
      --output_file outputs/mc_labels.jsonl
  stepdpo train-prm --model_name_or_path tiny-gpt2 --dataset_name outputs/mc_labels.jsonl --output_dir outputs/prm
"""


@dataclass
class ScriptArguments(common.DataArguments, common.RunArguments):
    """Solutions to label, the checker, rollouts and output."""

    _argument_group_name = "data, rollouts and output (stepdpo label)"

    arith_error_rate: float = field(default=0.5, metadata={"help": "With 'arith': share of corrupted solutions."})
    checker: str = field(default="auto", metadata={
        "help": "Who decides a completed solution is right: 'arith' (exact checker), 'numeric' (its final "
                "number equals the sample's gold answer), or 'auto' (arith for the arith task, else numeric)."})
    n_rollouts: int = field(default=8, metadata={"help": "Completions sampled per prefix."})
    mode: str = field(default="hard", metadata={"help": "'hard' (any completion right) or 'soft' (fraction)."})
    batch_size: int = field(default=32, metadata={"help": "Prefixes per generate call (x n_rollouts rows)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Token limit of one completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of the rollouts."})
    step_separator: str = field(default="\n", metadata={"help": "Text that ends every step."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag after each step."})
    output_file: str = field(default="mc_labels.jsonl", metadata={"help": "Where the labeled solutions go."})
    dry_run: bool = field(default=False, metadata={"help": "At most 8 solutions, 2 rollouts: a quick check."})


def make_parser(prog: str = "stepdpo label"):
    from trl import ModelConfig

    return common.make_trl_parser((ScriptArguments, ModelConfig), prog, DESCRIPTION, EPILOG)


def label_agreement(old, new, threshold: float = 0.5) -> float | None:
    """Share of steps whose given label and Monte-Carlo label fall on the same side of ``threshold``.

    >>> label_agreement([[1.0, 0.0]], [[1.0, 1.0]])
    0.5
    """
    pairs = [(a, b) for xs, ys in zip(old, new) if xs is not None for a, b in zip(xs, ys)]
    if not pairs:
        return None
    return sum((a >= threshold) == (b >= threshold) for a, b in pairs) / len(pairs)


def main(script_args: ScriptArguments, model_args) -> dict:
    from reward_models.data import save_samples
    from reward_models.labeling import HFRollout, monte_carlo_labels
    from reward_models.steps import StepFormat
    from reward_models.types import StepSample

    common.shrink_for_dry_run(script_args, n_rollouts=2, max_new_tokens=24)
    name = common.policy_name(model_args)
    fmt = StepFormat(separator=script_args.step_separator, tag=script_args.step_tag)
    data = common.read_data(script_args.dataset_name, split=script_args.dataset_split, config=script_args.dataset_config, max_samples=script_args.max_samples,
                       step_format=fmt, arith_error_rate=script_args.arith_error_rate, seed=script_args.seed,
                       skip_invalid=script_args.skip_invalid, rejects_path=script_args.rejects_path)
    samples = data.of_type(StepSample)
    if not samples:
        raise SystemExit(f"{data.source} holds no step-by-step solutions to label")
    kind = script_args.checker if script_args.checker != "auto" else ("arith" if data.is_arith else "numeric")
    if kind == "arith":
        def checker(prompt, steps):
            return common.arith_checker(prompt, steps)
    elif kind == "numeric":
        missing = [i for i, s in enumerate(samples) if s.answer is None]
        if missing:
            raise SystemExit(f"{data.source}: the numeric checker needs gold answers; sample {missing[0]} has none")
        gold = {s.prompt: s.answer for s in samples}

        def checker(prompt, steps):
            return common.numeric_checker(prompt, steps, gold[prompt])
    else:
        raise SystemExit(f"checker must be 'arith', 'numeric' or 'auto', got {script_args.checker!r}")
    dist.check_same([s.to_dict() for s in samples], "solutions to label",
                    fix="Start every process with the same dataset options (dataset_name, dataset_split, max_samples, "
                        "arith_error_rate, seed) on a data file that every process sees and nothing rewrites.")

    tokenizer = common.load_tokenizer(name, script_args.trust_remote_code, model_args.model_revision)
    model = common.to_device(common.load_causal_lm(name, model_args, trust_remote_code=script_args.trust_remote_code, seed=script_args.seed))
    rollout = HFRollout(model, tokenizer, max_new_tokens=script_args.max_new_tokens, temperature=script_args.temperature,
                        top_p=script_args.top_p, seed=script_args.seed)
    own, n_own = dist.shard(samples)  # this process's solutions (all of them in a one-process run)
    labeled = monte_carlo_labels(own, rollout, checker, n_rollouts=script_args.n_rollouts, mode=script_args.mode,
                                 batch_size=script_args.batch_size, step_format=fmt, progress=dist.is_main_process())
    labeled = dist.gather(labeled[:n_own])  # every solution once, in input order, on every process
    path = Path(script_args.output_file)
    if dist.is_main_process():
        save_samples(path, labeled)
    agree = label_agreement([s.labels for s in samples], [s.labels for s in labeled])
    n_steps = sum(len(s.steps) for s in labeled)
    good = sum(v >= 0.5 for s in labeled for v in s.labels)
    summary = {"command": COMMAND, "solutions": len(labeled), "steps": n_steps, "share_labeled_good": good / n_steps,
               "agreement_with_given_labels": agree, "checker": kind, "processes": dist.world()[0],
               "output_file": str(path), **common.rejected_rows(data)}
    if dist.is_main_process():
        common.write_json(path.with_name(path.name + ".stats.json"), summary)
        common.print_summary(COMMAND, summary)
    return summary


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
