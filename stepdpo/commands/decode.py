"""``stepdpo decode``: reward-guided decoding (best-of-N or step beam search) to JSONL.

Launch::

    stepdpo decode --config configs/decode_arith_beam.yaml
    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/decode.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/decode.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml --num_processes 2 scripts/decode.py \
        --model_name_or_path tiny-gpt2 --dataset_name arith:12 --output_file outputs/decoded.jsonl --dry_run

Under several processes each one decodes its own shard of the problems; the main process
writes every problem once, in input order, and ``processes`` in the ``.metrics.json`` says how
many took part.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stepdpo import distributed as dist
from stepdpo.commands import common

COMMAND = "decode"
logger = logging.getLogger(__name__)
METHODS = ("best_of_n", "beam", "greedy")

DESCRIPTION = """\
Solve problems with a policy guided by a reward model and write one JSON line per
problem (steps, step scores, aggregated score, and correctness when gold answers
are known).

Methods:
  best_of_n  sample N whole solutions, keep the best by aggregated step score
  beam       step-level beam search: keep --beam_width partial solutions, expand each
             with --expand sampled next steps, rescore, repeat (PRM-guided tree search)
  greedy     one greedy solution (no reward model needed; a baseline)

Main options:
  --config FILE              a recipe (YAML keys = option names)
  --model_name_or_path NAME  the policy (hub id, folder, tiny-gpt2)
  --reward_model SPEC        checker:arith | self | a saved reward-model folder
  --dataset_name SRC         problems: arith[:N] | file.jsonl | hub dataset (+ --prompt_column)
  --method best_of_n|beam|greedy, --n 8, --beam_width 4, --expand 4, --aggregation min
  --output_file FILE         JSONL output (a .metrics.json summary is written next to it)
"""

EPILOG = """\
example:
  stepdpo decode --model_name_or_path outputs/demo_stepdpo --reward_model outputs/demo_prm \\
      --dataset_name arith:100 --dataset_split test --method beam --output_file outputs/decoded.jsonl
"""


@dataclass
class ScriptArguments(common.ProblemArguments, common.RunArguments):
    """Problems, reward model, search settings and output."""

    _argument_group_name = "search and output (stepdpo decode)"

    dataset_split: str = field(default="test", metadata={"help": "Split to read."})
    reward_model: str = field(default="self", metadata={
        "help": "Scorer: 'checker:arith', 'self' (the policy's Yes/No verification prompt) or a saved reward-model "
                "folder."})
    method: str = field(default="best_of_n", metadata={"help": "'best_of_n', 'beam' or 'greedy'."})
    n: int = field(default=8, metadata={"help": "best_of_n: solutions sampled per problem."})
    beam_width: int = field(default=4, metadata={"help": "beam: partial solutions kept per problem."})
    expand: int = field(default=4, metadata={"help": "beam: next steps sampled per kept solution."})
    aggregation: str = field(default="min", metadata={
        "help": "How step scores make a solution score: 'min', 'prod', 'mean' or 'last'."})
    max_steps: int = field(default=8, metadata={"help": "Step limit of a solution."})
    max_new_tokens: int = field(default=64, metadata={"help": "Token limit of one step."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    sample_batch_size: int = field(default=64, metadata={"help": "Sequences per generate call."})
    prompts_per_batch: int = field(default=32, metadata={"help": "Problems per decoding call."})
    step_separator: str = field(default="\n", metadata={"help": "Text that ends every step."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag after each step."})
    output_file: str = field(default="decoded.jsonl", metadata={"help": "Output JSONL file."})
    dry_run: bool = field(default=False, metadata={"help": "At most 8 problems, 2 candidates: a quick check."})


def make_parser(prog: str = "stepdpo decode"):
    from trl import ModelConfig

    return common.make_trl_parser((ScriptArguments, ModelConfig), prog, DESCRIPTION, EPILOG)


def main(script_args: ScriptArguments, model_args) -> dict:
    from tqdm.auto import tqdm

    from reward_models.steps import StepFormat
    from stepdpo.decode import best_of_n, step_beam_search
    from stepdpo.sampling import StepSampler

    if script_args.method not in METHODS:
        raise SystemExit(f"method must be one of {METHODS}, got {script_args.method!r}")
    common.shrink_for_dry_run(script_args, n=2, beam_width=2, expand=2, max_steps=3, max_new_tokens=16)
    name = common.policy_name(model_args)
    fmt = StepFormat(separator=script_args.step_separator, tag=script_args.step_tag)
    data, prompts, answers = common.read_problems(script_args, fmt, script_args.seed)
    dist.check_same([prompts, answers], "problems to decode",
                    fix="Start every process with the same dataset options (dataset_name, dataset_split, max_samples, "
                        "prompt_column, prompt_template, seed) on a data file that every process sees and nothing "
                        "rewrites.")
    tokenizer = common.load_tokenizer(name, script_args.trust_remote_code, model_args.model_revision)
    model = common.to_device(common.load_causal_lm(name, model_args, trust_remote_code=script_args.trust_remote_code, seed=script_args.seed))
    model.eval()
    temperature = 0.0 if script_args.method == "greedy" else script_args.temperature
    sampler = StepSampler(model, tokenizer, fmt, max_new_tokens=script_args.max_new_tokens, temperature=temperature,
                          top_p=script_args.top_p, batch_size=script_args.sample_batch_size, seed=script_args.seed)
    judge = None
    if script_args.method != "greedy":
        judge = common.reward_model_from_spec(script_args.reward_model, policy=model, tokenizer=tokenizer, step_format=fmt)

    own, n_own = dist.shard(range(len(prompts)))  # this process's problems (all of them in a one-process run)
    rows = []
    with tqdm(total=len(own), desc=f"decoding ({script_args.method})", unit="problem",
              disable=not dist.is_main_process()) as bar:
        for chunk in common.chunks(own, script_args.prompts_per_batch):
            ps = [prompts[i] for i in chunk]
            if script_args.method == "best_of_n":
                out = best_of_n(sampler, judge, ps, n=script_args.n, max_steps=script_args.max_steps, aggregation=script_args.aggregation)
            elif script_args.method == "beam":
                out = step_beam_search(sampler, judge, ps, beam_width=script_args.beam_width, expand=script_args.expand,
                                       max_steps=script_args.max_steps, aggregation=script_args.aggregation)
            else:
                sols = sampler.sample_solution_details(ps, k=1, max_steps=script_args.max_steps)
                out = [s[0] for s in sols]
            for i, dec in zip(chunk, out):
                row = {"prompt": prompts[i], "steps": list(dec.steps), "finished": bool(dec.finished)}
                if script_args.method != "greedy":
                    row["step_scores"] = [float(v) for v in dec.step_scores]
                    row["score"] = float(dec.score) if dec.score == dec.score and abs(dec.score) != float("inf") \
                        else None
                if answers is not None and data.checker is not None:
                    row["answer"] = answers[i]
                    row["correct"] = bool(data.checker(prompts[i], list(dec.steps), answers[i]))
                rows.append(row)
            bar.update(len(chunk))
    rows = dist.gather(rows[:n_own])  # every problem once, in input order, on every process
    n_correct = sum(row.get("correct", False) for row in rows)
    path = Path(script_args.output_file)
    summary = {"command": COMMAND, "method": script_args.method, "problems": len(prompts),
               "finished": sum(row["finished"] for row in rows),
               "accuracy": (n_correct / len(prompts)) if answers is not None and prompts else None,
               "reward_model": script_args.reward_model if judge is not None else None, "processes": dist.world()[0],
               "output_file": str(path), **common.rejected_rows(data)}
    if dist.is_main_process():
        common.write_jsonl(path, rows)
        common.write_json(path.with_name(path.name + ".metrics.json"), summary)
        common.print_summary(COMMAND, summary)
    return summary


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
