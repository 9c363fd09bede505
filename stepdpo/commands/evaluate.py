"""``stepdpo evaluate``: step-level metrics of a reward model and/or a policy's accuracy.

Launch::

    stepdpo evaluate --config configs/evaluate_arith.yaml
    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/evaluate.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/evaluate.py --config RECIPE.yaml
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml --num_processes 2 scripts/evaluate.py \
        --config configs/evaluate_arith.yaml --model_name_or_path tiny-gpt2 --reward_model checker:arith --dry_run

Under several processes each one scores and solves its own shard of the data; the metrics come
from everyone's results gathered in input order, the main process writes the outputs, and
``processes`` in ``metrics.json`` says how many took part.

Writes ``metrics.json``, ``calibration.png`` (reliability diagram), ``step_scores.png`` and,
with a policy, ``accuracy.png`` into ``--output_dir``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stepdpo import distributed as dist
from stepdpo.commands import common

COMMAND = "evaluate"
logger = logging.getLogger(__name__)

DESCRIPTION = """\
Evaluate a reward model on step-labeled solutions and/or a policy on problems with
gold answers.

Reward model (--reward_model): scores every step of every labeled solution and reports
step AUROC, precision/recall/F1 of bad steps, ProcessBench-style first-error F1 and
expected calibration error, with a reliability diagram.

Policy (--model_name_or_path): solves the problems greedily and reports accuracy; with
a reward model too, also majority-vote and best-of-N accuracy over --n samples.

Main options:
  --config FILE              a recipe (YAML keys = option names)
  --reward_model SPEC        checker:arith | self | a saved reward-model folder
  --dataset_name SRC         labeled solutions / problems: arith[:N] | file.jsonl | hub dataset
  --model_name_or_path NAME  optional policy to evaluate (hub id, folder, tiny-gpt2)
  --n N                      samples per problem for best-of-N / majority vote (0: greedy only)
  --output_dir DIR           metrics.json and PNG plots
"""

EPILOG = """\
examples:
  stepdpo evaluate --reward_model outputs/demo_prm --dataset_name arith:300 --output_dir outputs/eval_prm
  stepdpo evaluate --model_name_or_path outputs/demo_stepdpo --reward_model checker:arith \\
      --dataset_name arith:300 --n 8 --output_dir outputs/eval_policy
"""


@dataclass
class ScriptArguments(common.DataArguments, common.RunArguments):
    """What to evaluate, on which data, and where the report goes."""

    _argument_group_name = "evaluation (stepdpo evaluate)"

    dataset_split: str = field(default="test", metadata={"help": "Split to read."})
    reward_model: str | None = field(default=None, metadata={
        "help": "Reward model to evaluate: 'checker:arith', 'self' (needs a policy) or a saved folder."})
    arith_error_rate: float = field(default=0.5, metadata={"help": "With 'arith': share of corrupted solutions."})
    data_neutral: str = field(default="positive", metadata={"help": "PRM800K neutral rating: positive|negative|half."})
    threshold: float = field(default=0.5, metadata={"help": "A step is predicted bad when its score is below this."})
    batch_size: int = field(default=16, metadata={"help": "Solutions per scoring call."})
    n: int = field(default=0, metadata={"help": "Policy: samples per problem for majority vote and best-of-N."})
    aggregation: str = field(default="min", metadata={"help": "Best-of-N: 'min', 'prod', 'mean' or 'last'."})
    max_steps: int = field(default=8, metadata={"help": "Policy: step limit of a solution."})
    max_new_tokens: int = field(default=64, metadata={"help": "Policy: token limit of one step."})
    temperature: float = field(default=1.0, metadata={"help": "Policy: sampling temperature for the n samples."})
    step_separator: str = field(default="\n", metadata={"help": "Text that ends every step."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag after each step."})
    output_dir: str = field(default="outputs/evaluate", metadata={
        "help": "Where metrics.json, plots and per_problem.jsonl (one line per problem: the policy's solutions and "
                "whether each is right) go."})
    compare_to: str | None = field(default=None, metadata={
        "help": "A per_problem.jsonl of an earlier evaluation on the same problems (e.g. the policy before "
                "training): metrics.json gets the paired difference (mean, standard error, problems gained and "
                "lost) for each accuracy both runs measured."})
    dry_run: bool = field(default=False, metadata={"help": "At most 8 examples and 2 samples: a quick check."})


def make_parser(prog: str = "stepdpo evaluate"):
    from trl import ModelConfig

    return common.make_trl_parser((ScriptArguments, ModelConfig), prog, DESCRIPTION, EPILOG)


def score_samples(rm, samples, batch_size: int) -> list[list[float]]:
    """Step scores of every sample, in input order, on every process: each process scores its
    shard in batches of ``batch_size`` (one process: the batches ``evaluate_prm`` would make)."""
    from tqdm.auto import tqdm

    from reward_models.base import as_reward_model

    rm = as_reward_model(rm)
    own, n_own = dist.shard(samples)
    scores: list[list[float]] = []
    for start in tqdm(range(0, len(own), batch_size), desc="evaluating", disable=not dist.is_main_process()):
        chunk = own[start:start + batch_size]
        out = rm.score_steps([s.prompt for s in chunk], [list(s.steps) for s in chunk])
        scores.extend([float(v) for v in row] for row in out)
    return dist.gather(scores[:n_own])


def evaluate_reward_model(rm, samples, script_args: ScriptArguments, out: Path) -> dict:
    from reward_models.evaluation import evaluate_prm, reliability_diagram
    from stepdpo.report import plot_step_scores

    rows = iter(score_samples(rm, samples, script_args.batch_size))  # evaluate_prm asks for them in input order
    res = evaluate_prm(lambda prompt, steps: next(rows), samples, threshold=script_args.threshold, batch_size=script_args.batch_size,
                       progress=False)
    metrics = res.to_dict()
    flat_s = [v for row in res.step_scores for v in row]
    flat_l = [v for s in samples for v in s.labels]
    if all(0.0 <= v <= 1.0 for v in flat_s):
        if dist.is_main_process():
            reliability_diagram(flat_s, flat_l, out / "calibration.png")
        metrics["calibration_png"] = "calibration.png"
    k = min(8, len(samples))
    if dist.is_main_process():
        # the arith task's labels come from its checker; any other data's are the labels given in it (human,
        # Monte-Carlo from `stepdpo label`, ...): named by the data they came from
        source = ("checker label" if common.parse_arith_spec(script_args.dataset_name) is not None
                  else f"label in {Path(script_args.dataset_name).name}")
        plot_step_scores([s.steps for s in samples[:k]], res.step_scores[:k], out / "step_scores.png",
                         labels=[s.labels for s in samples[:k]], title=f"step scores: {script_args.reward_model}",
                         label_source=source)
    return metrics


def evaluate_policy(model, tokenizer, rm, prompts, answers, checker, script_args: ScriptArguments, fmt, out: Path) -> dict:
    """Accuracies of the policy: each process solves its shard of the problems; the accuracies
    count everyone's per-problem rows, gathered in input order."""
    from reward_models.evaluation import vote
    from stepdpo.decode import best_of_n
    from stepdpo.report import plot_accuracy
    from stepdpo.sampling import StepSampler

    own, n_own = dist.shard(list(zip(prompts, answers)))
    prompts, answers = [p for p, _ in own], [ans for _, ans in own]  # from here on: this process's problems
    greedy = StepSampler(model, tokenizer, fmt, max_new_tokens=script_args.max_new_tokens, temperature=0.0, seed=script_args.seed)
    sols = greedy.sample_solution_details(prompts, k=1, max_steps=script_args.max_steps)
    per_problem = [{"prompt": p, "answer": ans, "greedy_steps": s[0].steps,
                    "greedy": bool(checker(p, s[0].steps, ans))} for p, s, ans in zip(prompts, sols, answers)]
    kinds = ["greedy"]
    if script_args.n > 1:
        sampler = StepSampler(model, tokenizer, fmt, max_new_tokens=script_args.max_new_tokens, temperature=script_args.temperature,
                              seed=script_args.seed)
        if rm is not None:
            decoded = best_of_n(sampler, rm, prompts, n=script_args.n, max_steps=script_args.max_steps, aggregation=script_args.aggregation,
                                keep_candidates=True)
            for row, p, d, ans in zip(per_problem, prompts, decoded, answers):
                row[f"best-of-{script_args.n}"] = bool(checker(p, d.steps, ans))
            kinds.append(f"best-of-{script_args.n}")
            cands = [[c["steps"] for c in d.candidates] for d in decoded]
        else:
            cands = [[s.steps for s in row] for row in sampler.sample_solution_details(prompts, k=script_args.n,
                                                                                      max_steps=script_args.max_steps)]
        for row, p, sols_p, ans in zip(per_problem, prompts, cands, answers):
            finals = [common.final_number("\n".join(s[-1:])) if s else None for s in sols_p]
            winner = vote(finals, [1.0] * len(finals))
            row[f"majority-of-{script_args.n}"] = bool(winner is not None and any(f == winner and checker(p, s, ans)
                                                                        for f, s in zip(finals, sols_p)))
        kinds.append(f"majority-of-{script_args.n}")
    per_problem = dist.gather(per_problem[:n_own])  # every problem once, in input order
    results = {k: (sum(row[k] for row in per_problem), len(per_problem)) for k in kinds}
    if dist.is_main_process():
        plot_accuracy(results, out / "accuracy.png", title="policy accuracy")
        common.write_jsonl(out / "per_problem.jsonl", per_problem)
    metrics = {name: {"correct": c, "total": t, "accuracy": c / t if t else None} for name, (c, t) in results.items()}
    if script_args.compare_to:
        metrics["paired_vs"] = {"file": script_args.compare_to, **compare_per_problem(per_problem, script_args.compare_to)}
    return metrics


def compare_per_problem(rows: list[dict], path: str) -> dict:
    """Paired differences (this run minus ``path``'s) for every accuracy both runs recorded, on the
    same problems (matched by prompt; an error names what does not match)."""
    import json

    from stepdpo.report import paired_difference

    before = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                before[row["prompt"]] = row
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}, row {n}: not a per_problem.jsonl row ({e})") from None
    missing = [r["prompt"] for r in rows if r["prompt"] not in before]
    if missing:
        raise SystemExit(f"{path} lacks {len(missing)} of the {len(rows)} problems evaluated here (first: "
                         f"{missing[0][:60]!r}); compare runs on the same dataset and max_samples")
    out = {}
    for key in [k for k in rows[0] if isinstance(rows[0][k], bool)]:
        if all(key in before[r["prompt"]] for r in rows):
            out[key] = paired_difference([int(r[key]) for r in rows], [int(before[r["prompt"]][key]) for r in rows])
    return out


def main(script_args: ScriptArguments, model_args) -> dict:
    from reward_models.steps import StepFormat
    from reward_models.types import StepSample

    common.shrink_for_dry_run(script_args, n=2, max_steps=3, max_new_tokens=16)
    name = model_args.model_name_or_path
    if script_args.reward_model is None and not name:
        raise SystemExit("nothing to evaluate: give --reward_model and/or --model_name_or_path")
    fmt = StepFormat(separator=script_args.step_separator, tag=script_args.step_tag)
    data = common.read_data(script_args.dataset_name, split=script_args.dataset_split, config=script_args.dataset_config, max_samples=script_args.max_samples,
                       step_format=fmt, arith_error_rate=script_args.arith_error_rate, seed=script_args.seed, neutral=script_args.data_neutral,
                       skip_invalid=script_args.skip_invalid, rejects_path=script_args.rejects_path)
    dist.check_same([[x.to_dict() for x in data.items], data.prompts, data.answers], "evaluation data",
                    fix="Start every process with the same dataset options (dataset_name, dataset_split, max_samples, "
                        "arith_error_rate, seed) on a data file that every process sees and nothing rewrites.")
    out = Path(script_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = tokenizer = None
    if name:
        tokenizer = common.load_tokenizer(name, script_args.trust_remote_code, model_args.model_revision)
        model = common.to_device(common.load_causal_lm(name, model_args, trust_remote_code=script_args.trust_remote_code, seed=script_args.seed))
        model.eval()
    rm = None
    if script_args.reward_model is not None:
        if script_args.reward_model in ("", "self") and model is None:
            raise SystemExit("reward_model 'self' needs the policy: set model_name_or_path")
        rm = common.reward_model_from_spec(script_args.reward_model, policy=model, tokenizer=tokenizer, step_format=fmt)
    metrics: dict = {"command": COMMAND, "dataset": script_args.dataset_name, "split": script_args.dataset_split,
                     "processes": dist.world()[0], **common.rejected_rows(data)}
    if rm is not None:
        labeled = [s for s in data.of_type(StepSample) if s.labels is not None]
        if labeled:
            metrics["reward_model"] = {"name": script_args.reward_model, **evaluate_reward_model(rm, labeled, script_args, out)}
        else:
            logger.warning("%s has no step labels: reward-model metrics skipped", script_args.dataset_name)
    if model is not None:
        prompts, answers = common.unique_prompts(data.prompts, data.answers)
        if answers is None or data.checker is None:
            raise SystemExit(f"{script_args.dataset_name}: policy accuracy needs gold answers (arith, or samples with answers)")
        metrics["policy"] = {"name": name, **evaluate_policy(model, tokenizer, rm, prompts, answers, data.checker, script_args,
                                                             fmt, out)}
    if not dist.is_main_process():
        return metrics
    common.write_json(out / "metrics.json", metrics)
    flat = {}
    if "reward_model" in metrics:
        r = metrics["reward_model"]
        flat.update({"rm_step_auroc": r["steps"]["auroc"], "rm_processbench_f1": r["first_error"]["f1"],
                     "rm_ece": r["ece"]})
    for k, v in metrics.get("policy", {}).items():
        if isinstance(v, dict):
            flat[f"policy_{k}_accuracy"] = v["accuracy"]
    common.print_summary(COMMAND, {**flat, "processes": metrics["processes"], **common.rejected_rows(data),
                                   "output_dir": str(out)})
    return metrics


if __name__ == "__main__":
    common.run(sys.modules[__name__], command=COMMAND)
