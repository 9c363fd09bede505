"""Does Stepwise DPO help? Accuracy of the demo task's policy after each kind of preference training.

Per seed, everything is built from nothing (the demo's stages, :mod:`stepdpo.demo`):

1. an SFT policy (tiny GPT-2, gold solutions) and a PRM (2-class head on its backbone, trained on
   checker-labeled policy samples; step threshold tuned for first-error F1 on validation problems);
2. **one set of policy samples**: ``k`` solutions per pair prompt at the demo's temperature;
3. from those same samples, for each judge (the task's checker, the trained PRM):

   * ``outcome`` - whole-solution pairs (best vs worst solution of a prompt;
     :func:`~stepdpo.pairs.build_outcome_pairs`; checker: answer correct or not, PRM: min step score);
   * ``step, same pairs`` - first-error step pairs (:func:`~stepdpo.pairs.build_step_pairs` with
     ``solutions=`` the same samples), randomly subsampled to the outcome arm's pair count;
   * ``step, same samples`` - every step pair those samples give (the same sampling budget);
   * ``NLL only`` (checker, same samples) - the step arm's loss without the DPO term: supervised
     training on the chosen steps alone, which separates what the preference adds;

4. each arm trains a copy of the SFT policy with the same :class:`~stepdpo.trainer.StepwiseDPOTrainer`
   arguments (``PROTOCOL``), and greedy accuracy is measured on the held-out test problems;
5. PRM first-error F1 / step AUROC on held-out policy samples, and best-of-N by the PRM vs majority
   vote over N samples of the SFT policy on the test problems.

The protocol (learning rate, batch, epochs, loss) was fixed on validation problems of seed 0 before
the test runs (BENCHMARKS.md says how); nothing here is tuned on test accuracy.

    python -m bench.run --full --only helps     # 3 seeds, 1,000 test problems (about 30 minutes here)
    python -m bench.helps --seeds 0 --mode quick
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# One training protocol for every arm (chosen on seed-0 validation problems; see BENCHMARKS.md).
PROTOCOL = {"dpo_lr": 1e-5, "dpo_beta": 0.1, "dpo_loss": ["sigmoid", "sft"], "dpo_loss_weights": [1.0, 1.0],
            "dpo_epochs": 1.0, "dpo_batch": 64, "dpo_scheduler": "cosine", "dpo_warmup": 0.1}


@dataclass
class HelpsSize:
    seeds: list[int]
    demo: dict[str, Any]  # DemoConfig fields
    k: int = 4  # samples per pair prompt
    best_of_n: int = 4
    workers: int = 2
    protocol: dict[str, Any] = field(default_factory=lambda: dict(PROTOCOL))


def sizes(mode: str) -> HelpsSize:
    if mode == "full":
        return HelpsSize(seeds=[0, 1, 2], demo={"n_test": 1000, "n_val": 500, "n_pair_prompts": 2000, "sft_steps": 700})
    if mode == "quick":
        return HelpsSize(seeds=[0], workers=1, demo={"quick": True})
    # smoke: seconds; the numbers mean nothing, the plumbing is exercised
    return HelpsSize(seeds=[0], workers=1, best_of_n=2,
                     demo={"quick": True, "n_test": 20, "n_sft": 300, "n_prm_prompts": 10, "n_pair_prompts": 16,
                           "n_val": 10, "sft_steps": 60, "prm_steps": 3, "prm_injected": 10},
                     protocol={**PROTOCOL, "dpo_epochs": 1.0, "dpo_batch": 8})


def demo_config(size: HelpsSize, seed: int):
    from stepdpo.demo import DemoConfig

    fields = dict(size.demo)
    quick = fields.pop("quick", False)
    cfg = DemoConfig.quick(seed) if quick else DemoConfig(seed=seed)
    return replace(cfg, k=size.k, best_of_n=size.best_of_n, **fields, **size.protocol)


# -- one seed --------------------------------------------------------------------------------------
def run_seed(size: HelpsSize, seed: int, work_dir: str, threads: int = 1) -> dict[str, Any]:
    """All arms for one seed; returns a JSON-able dict. Runs in a worker process."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, set_seed

    from reward_models.base import load_reward_model
    from reward_models.evaluation import evaluate_prm, tune_first_error_threshold
    from reward_models.testing import tiny_tokenizer
    from stepdpo.demo import (
        best_of_n_vs_vote,
        make_data,
        pair_quality,
        policy_accuracy,
        prm_data,
        run_stepwise_dpo,
        train_policy,
        train_prm,
    )
    from stepdpo.pairs import build_outcome_pairs, build_step_pairs
    from stepdpo.sampling import StepSampler
    from stepdpo.tasks.arith import STEP_FORMAT, checker_reward_model, is_correct

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    cfg = demo_config(size, seed)
    set_seed(seed)
    out = Path(work_dir) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    t_all, timings = time.time(), {}

    def tick(name, t0):
        timings[name] = round(time.time() - t0, 1)
        logger.info("seed %d: %s done in %.0f s", seed, name, timings[name])

    tok = tiny_tokenizer()
    data = make_data(cfg)
    task = data["task"]
    t0 = time.time()
    policy, _ = train_policy(cfg, tok, data["sft"], out)
    policy.eval()
    tick("sft", t0)
    sft_dir = out / "policy_sft"

    t0 = time.time()
    prm_train, prm_val, prm_test = prm_data(cfg, policy, tok, data)
    prm_dir, _ = train_prm(cfg, tok, sft_dir, prm_train, out)
    prm = load_reward_model(prm_dir)
    val_scores = prm.score_steps([s.prompt for s in prm_val], [s.steps for s in prm_val])
    threshold, _ = tune_first_error_threshold(val_scores, [s.first_error for s in prm_val])
    prm_eval = evaluate_prm(prm, prm_test, threshold=threshold).to_dict()
    tick("prm", t0)

    # one set of policy samples feeds every pair set
    t0 = time.time()
    prompts = [s.prompt for s in data["pair_prompts"]]
    answers = [s.meta["expression"] for s in data["pair_prompts"]]
    sampler = StepSampler(policy, tok, STEP_FORMAT, max_new_tokens=24, temperature=cfg.temperature,
                          seed=seed + 3, batch_size=256)
    samples = sampler.sample_solution_details(prompts, k=cfg.k, max_steps=8)
    n_correct_samples = sum(is_correct(a, sol.steps) for a, row in zip(answers, samples) for sol in row)
    judges = {"checker": (checker_reward_model(task), 0.5), "prm": (prm, threshold)}
    pair_sets: dict[str, dict[str, Any]] = {}
    rng = random.Random(seed)
    for name, (judge, thr) in judges.items():
        if name == "checker":
            outcome = build_outcome_pairs(prompts, samples, answers=answers,
                                          answer_checker=lambda p, steps, a: is_correct(a, steps))
        else:
            outcome = build_outcome_pairs(prompts, samples, prm, aggregate="min")
        step = build_step_pairs(prompts, sampler, judge, strategy="first_error", k=cfg.k, threshold=thr,
                                max_steps=8, solutions=samples)
        same_n = rng.sample(step.pairs, min(len(outcome.pairs), len(step.pairs)))
        pair_sets[name] = {"outcome": outcome, "step": step, "same_n": same_n}
    tick("pairs", t0)

    arms = {}
    for name in judges:
        ps = pair_sets[name]
        arms[f"outcome/{name}"] = ("outcome DPO", name, ps["outcome"].pairs, None)
        arms[f"step_same_pairs/{name}"] = ("Stepwise DPO, same pairs", name, ps["same_n"], None)
        arms[f"step_same_samples/{name}"] = ("Stepwise DPO, same samples", name, ps["step"].pairs, None)
    arms["nll_only/checker"] = ("NLL on chosen steps only", "checker", pair_sets["checker"]["step"].pairs,
                                {"dpo_loss": ["sft"], "dpo_loss_weights": [1.0]})

    t0 = time.time()
    c0, n0, _ = policy_accuracy(policy, tok, data["test"])
    results = {"sft": {"label": "SFT policy", "judge": "-", "pairs": 0, "correct": c0, "n": n0, "accuracy": c0 / n0}}
    tick("eval_sft", t0)
    for key, (label, judge_name, pairs, override) in arms.items():
        t0 = time.time()
        row = {"label": label, "judge": judge_name, "pairs": len(pairs)}
        if key.startswith("outcome"):
            row["pair_quality"] = {"both": sum(is_correct(task.expression_of(p.prompt), p.chosen_steps)
                                               and not is_correct(task.expression_of(p.prompt), p.rejected_steps)
                                               for p in pairs) / max(len(pairs), 1)}
        else:
            row["pair_quality"] = pair_quality(pairs, task)
            row["depths"] = _depths(pairs)
        if pairs:
            model = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True)
            arm_cfg = replace(cfg, **(override or {}))
            trainer = run_stepwise_dpo(arm_cfg, model, tok, pairs, out / key.replace("/", "_"))
            model = trainer.model
            model.eval()
            logs = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
            if logs:
                row["final_train_reward_accuracy"] = logs[-1]["rewards/accuracies"]
            c, n, _ = policy_accuracy(model, tok, data["test"])
            row.update(correct=c, n=n, accuracy=c / n)
            del trainer, model
        else:
            row.update(correct=None, n=n0, accuracy=None, note="no pairs")
        results[key] = row
        tick(key, t0)

    t0 = time.time()
    bon = best_of_n_vs_vote(policy, tok, data["test"], prm, cfg.best_of_n, seed + 4)
    tick("best_of_n", t0)
    timings["total"] = round(time.time() - t_all, 1)
    result = {
        "seed": seed, "config": asdict(cfg), "arms": results, "prm": prm_eval, "prm_threshold": threshold,
        "best_of_n": bon, "samples": {"prompts": len(prompts), "k": cfg.k, "correct": n_correct_samples,
                                      "total": sum(len(r) for r in samples)},
        "pair_stats": {name: {"outcome": ps["outcome"].stats, "step": ps["step"].stats}
                       for name, ps in pair_sets.items()},
        "timings_s": timings,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")  # kept if a later seed fails
    return result


def _depths(pairs) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pairs:
        d = str(len(p.prefix_steps))
        out[d] = out.get(d, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _worker(args) -> dict[str, Any]:
    size, seed, work_dir, threads = args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_seed(size, seed, work_dir, threads)


# -- all seeds, summary ------------------------------------------------------------------------------
def run(mode: str, device, threads: int = 1, work_dir: str | None = None, seeds: list[int] | None = None
        ) -> dict[str, Any]:
    size = sizes(mode)
    if seeds is not None:
        size.seeds = list(seeds)
    work = work_dir or os.path.join("outputs", "bench-helps", mode)
    jobs = [(size, s, work, threads) for s in size.seeds]
    if size.workers > 1 and len(jobs) > 1 and device.type != "cuda":
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(size.workers, len(jobs))) as pool:
            per_seed = pool.map(_worker, jobs)
    else:
        per_seed = [_worker(j) for j in jobs]
    summary = summarize(per_seed)
    return {"rows": [], "per_seed": per_seed, "summary": summary, "protocol": size.protocol,
            "markdown": render(summary, per_seed, size)}


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    keys = list(per_seed[0]["arms"])
    arms = {}
    for key in keys:
        rows = [r["arms"][key] for r in per_seed]
        acc = [r.get("accuracy") for r in rows]
        delta = [None if r.get("accuracy") is None else r["accuracy"] - s["arms"]["sft"]["accuracy"]
                 for r, s in zip(rows, per_seed)]
        quality = [r["pair_quality"]["both"] for r in rows if "pair_quality" in r]
        arms[key] = {"label": rows[0]["label"], "judge": rows[0]["judge"],
                     "accuracy": _mean_sd(acc), "delta": _mean_sd(delta), "per_seed": acc,
                     "pairs": _mean_sd([r["pairs"] for r in rows]),
                     "pair_quality": _mean_sd(quality) if quality else None}
    prm = {"first_error_f1": _mean_sd([r["prm"]["first_error"]["f1"] for r in per_seed]),
           "step_auroc": _mean_sd([r["prm"]["steps"]["auroc"] for r in per_seed])}
    bon = {k: _mean_sd([r["best_of_n"][k] for r in per_seed])
           for k in ("best_of_n_prm", "majority_vote", "prm_weighted_vote", "pass_at_n")}
    return {"arms": arms, "prm": prm, "best_of_n": bon, "seeds": [r["seed"] for r in per_seed],
            "n_test": per_seed[0]["arms"]["sft"]["n"]}


def _pct(ms: tuple[float, float], signed: bool = False) -> str:
    m, s = ms
    if m != m:
        return "n/a"
    return f"{m * 100:+.1f} ± {s * 100:.1f}" if signed else f"{m * 100:.1f} ± {s * 100:.1f}"


def render(summary: dict[str, Any], per_seed: list[dict[str, Any]], size: HelpsSize) -> str:
    n_test = summary["n_test"]
    lines = [f"Seeds {summary['seeds']}, {n_test} held-out test problems per seed (greedy accuracy, checker); "
             f"mean ± standard deviation over seeds; Δ = arm minus the same seed's SFT policy. "
             f"Protocol for every arm: `{json.dumps(size.protocol)}`.", "",
             "| arm | judge | pairs | right pairs (checker) | accuracy % | Δ vs SFT (points) | per seed % |",
             "|---|---|---|---|---|---|---|"]
    for key, a in summary["arms"].items():
        per = ", ".join("-" if x is None else f"{x * 100:.1f}" for x in a["per_seed"])
        q = "-" if not a["pair_quality"] else f"{a['pair_quality'][0] * 100:.0f}%"
        pairs = "-" if key == "sft" else f"{a['pairs'][0]:.0f}"
        delta = "-" if key == "sft" else _pct(a["delta"], signed=True)
        lines.append(f"| {a['label']} | {a['judge']} | {pairs} | {q} | {_pct(a['accuracy'])} | {delta} | {per} |")
    lines += ["", "Paired differences (same seed, same samples; mean ± standard deviation over seeds, points):", ""]
    for a, b in COMPARISONS:
        if a in summary["arms"] and b in summary["arms"]:
            diffs = [None if x is None or y is None else x - y
                     for x, y in zip(summary["arms"][a]["per_seed"], summary["arms"][b]["per_seed"])]
            per = ", ".join("-" if d is None else f"{d * 100:+.1f}" for d in diffs)
            lines.append(f"- {_arm_name(summary, a)} minus {_arm_name(summary, b)}: "
                         f"{_pct(_mean_sd(diffs), signed=True)} (per seed {per})")
    noise = _noise_band(summary)
    b, p = summary["best_of_n"], summary["prm"]
    n = per_seed[0]["best_of_n"]["n"]
    lines += ["", f"- Noise: one seed's accuracy on {n_test} problems has a binomial standard error of about "
                  f"{noise * 100:.1f} points; the spread over seeds also includes the SFT policy, PRM and samples "
                  f"changing with the seed.",
              f"- PRM (held-out policy samples, validation-tuned threshold): first-error F1 {_num(p['first_error_f1'])}, "
              f"step AUROC {_num(p['step_auroc'])}.",
              f"- SFT policy, {n} samples per test problem: best-of-{n} by PRM {_pct(b['best_of_n_prm'])}%, majority "
              f"vote {_pct(b['majority_vote'])}%, PRM-weighted vote {_pct(b['prm_weighted_vote'])}%, "
              f"pass@{n} {_pct(b['pass_at_n'])}%.",
              f"- Samples per seed: {per_seed[0]['samples']['prompts']} pair prompts x {per_seed[0]['samples']['k']}; "
              "correct solutions among them: "
              + ", ".join(f"{r['samples']['correct']}/{r['samples']['total']}" for r in per_seed) + "."]
    return "\n".join(lines)


COMPARISONS = [("step_same_pairs/checker", "outcome/checker"), ("step_same_samples/checker", "outcome/checker"),
               ("step_same_samples/checker", "nll_only/checker"), ("step_same_pairs/prm", "outcome/prm"),
               ("step_same_samples/prm", "outcome/prm"), ("step_same_samples/checker", "step_same_samples/prm")]


def _arm_name(summary: dict[str, Any], key: str) -> str:
    a = summary["arms"][key]
    return f"{a['label']} ({a['judge']})"


def rerender(path: str) -> None:
    """Recompute the summary and table of a result file from its per-seed numbers (no training)."""
    res = json.loads(Path(path).read_text())
    size = sizes(res["mode"])
    size.protocol = res.get("protocol", size.protocol)
    res["summary"] = summarize(res["per_seed"])
    res["markdown"] = render(res["summary"], res["per_seed"], size)
    Path(path).write_text(json.dumps(res, indent=2) + "\n")


def _num(ms: tuple[float, float]) -> str:
    return "n/a" if ms[0] != ms[0] else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def _noise_band(summary: dict[str, Any]) -> float:
    acc = summary["arms"]["sft"]["accuracy"][0]
    return math.sqrt(max(acc * (1 - acc), 1e-9) / max(summary["n_test"], 1))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.helps", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("smoke", "quick", "full"), default="quick")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--rerender", default=None, metavar="JSON",
                   help="only rebuild the summary and table of an existing result file (then run "
                        "python -m bench.run --markdown-only to refresh BENCHMARKS.md)")
    args = p.parse_args(argv)
    if args.rerender:
        rerender(args.rerender)
        return 0
    import torch

    torch.set_num_threads(1)
    res = run(args.mode, torch.device("cpu"), work_dir=args.work_dir, seeds=args.seeds)
    print(res["markdown"])
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
