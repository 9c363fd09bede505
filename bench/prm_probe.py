"""Which PRM recipe checks steps? The validation sweep behind the demo's default PRM (issue 13).

On one seed's SFT policy (the ``helps`` benchmark's, reused from ``outputs/bench-helps/full/seed<N>``),
every candidate scores the same held-out policy solutions: 2 samples at T=0.7 of each of the first
200 **validation** problems tune the first-error threshold, 2 samples of the other 200 are scored
(never the test problems). Reported: step AUROC, AUROC on first steps alone (where position says
nothing), ProcessBench-style F1 with its two accuracies.

Candidates (``--arms``, comma-separated):

* ``pos`` - no model: score = minus the step index;
* ``L0`` - no training: the SFT policy's token probabilities (each ``token_score``);
* ``V<steps>[lr<lr>]`` - a verifier LM: the policy trained ``steps`` more with next-token loss on the gold solutions
  of the demo's verifier problems (``prm_gold``), scored by token probability;
* ``I<steps>b<beta>`` - an implicit PRM (:class:`reward_models.implicit_trainer.ImplicitPRMTrainer`) trained
  from the policy on checker-labeled policy samples (2 per PRM prompt at T=0.7) + gold + injected errors;
* ``H<steps>`` - the earlier default: a 2-class head on the policy's backbone, same labeled data;
* ``G<steps>`` - a generative Yes/No verifier (``PRMTrainer(backend="verification")``, LM loss weight 1),
  same labeled data.

    python -m bench.prm_probe --seed 0 --arms pos,L0,V200,V400,I200b0.5,H400,G200
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def run(seed: int, arms: list[str], policy_dir: str | None = None) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from reward_models.evaluation import (
        auroc,
        first_error_f1,
        predict_first_error,
        tune_first_error_threshold,
    )
    from reward_models.likelihood import TOKEN_SCORES, LikelihoodRewardModel
    from reward_models.testing import tiny_tokenizer
    from stepdpo.demo import DemoConfig, checker_labeled, make_data, solve, train_prm
    from stepdpo.tasks.arith import STEP_FORMAT

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    cfg = DemoConfig(seed=seed, n_test=1000, n_val=400, n_pair_prompts=4000)  # the helps benchmark's sets
    tok = tiny_tokenizer()
    data = make_data(cfg)
    policy_dir = policy_dir or f"outputs/bench-helps/full/seed{seed}/policy_sft"
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, use_safetensors=True).eval()
    tune_p, eval_p = data["val"][:200], data["val"][200:]
    tune = checker_labeled(tune_p, solve(policy, tok, [s.prompt for s in tune_p], k=2, temperature=0.7,
                                         seed=seed + 5))
    ev = checker_labeled(eval_p, solve(policy, tok, [s.prompt for s in eval_p], k=2, temperature=0.7, seed=seed + 6))
    arms_out: list[dict[str, Any]] = []

    def report(name: str, rm, train_s: float = 0.0) -> None:
        def scores(samples):
            return rm.score_steps([s.prompt for s in samples], [s.steps for s in samples])

        ts, es = scores(tune), scores(ev)
        thr, _ = tune_first_error_threshold(ts, [s.first_error for s in tune])
        fe = first_error_f1([predict_first_error(r, thr) for r in es], [s.first_error for s in ev])
        row = {"arm": name, "step_auroc": auroc([v for r in es for v in r], [x for s in ev for x in s.labels]),
               "first_step_auroc": auroc([r[0] for r in es], [s.labels[0] for s in ev]),
               "processbench_f1": fe.f1, "acc_erroneous": fe.acc_erroneous, "acc_correct": fe.acc_correct,
               "threshold": thr, "train_s": round(train_s, 1)}
        arms_out.append(row)
        print(json.dumps(row), flush=True)

    labeled = None

    def labeled_data():
        nonlocal labeled
        if labeled is None:
            pp = data["prm_prompts"]
            sols = solve(policy, tok, [s.prompt for s in pp], k=2, temperature=0.7, seed=seed + 1)
            labeled = checker_labeled(pp, sols) + list(pp) + list(data["injected"])
        return labeled

    from reward_models.base import load_reward_model
    from reward_models.rules import FunctionRewardModel

    out = Path("outputs/bench-prm-probe") / f"seed{seed}"
    for arm in arms:
        if arm == "pos":
            report("position (minus the step index)", FunctionRewardModel(lambda p, st: [-float(j) for j in
                                                                                      range(len(st))]))
            continue
        if arm == "L0":
            for ts in TOKEN_SCORES:
                report(f"SFT policy likelihood, {ts} (no training)",
                       LikelihoodRewardModel.from_model(policy, tok, step_format=STEP_FORMAT, token_score=ts))
            continue
        m = re.fullmatch(r"([VIHG])(\d+)(?:b([\d.]+))?(?:lr([\d.e-]+))?", arm)
        if not m:
            raise SystemExit(f"unknown arm {arm!r}")
        kind = {"V": "likelihood", "I": "implicit", "H": "head", "G": "verification"}[m.group(1)]
        c = replace(cfg, prm_kind=kind, prm_steps=int(m.group(2)),
                    **({} if kind == "likelihood" else {"prm_batch": 32, "prm_lr": 3e-4 if kind == "implicit"
                                                        else 1e-3}))
        if m.group(4):
            c = replace(c, prm_lr=float(m.group(4)))
        train = list(data["prm_gold"]) if kind == "likelihood" else labeled_data()
        t0 = time.time()
        where = out / arm
        if kind == "implicit":  # beta from the arm name
            from reward_models.implicit_trainer import ImplicitPRMConfig, ImplicitPRMTrainer

            beta = float(m.group(3) or 0.5)
            args = ImplicitPRMConfig(output_dir=str(where / "run"), beta=beta, max_steps=c.prm_steps,
                                     learning_rate=c.prm_lr, per_device_train_batch_size=c.prm_batch,
                                     logging_steps=20, save_strategy="no", report_to=[], seed=seed, use_cpu=True,
                                     disable_tqdm=True, lr_scheduler_type="cosine", warmup_steps=10,
                                     step_separator="\n")
            tr = ImplicitPRMTrainer(model=copy.deepcopy(policy).train(), args=args, train_dataset=train,
                                    processing_class=tok)
            tr.train()
            tr.save_model(str(where / "prm"))
            path = where / "prm"
        else:
            path, _ = train_prm(c, tok, Path(policy_dir), train, where)
        report(f"{kind}, {c.prm_steps} steps" + (f", beta {m.group(3)}" if m.group(3) else "")
               + (f", lr {m.group(4)}" if m.group(4) else ""),
               load_reward_model(path, device="cpu"), time.time() - t0)
    return {"seed": seed, "policy": policy_dir, "n_tune_solutions": len(tune), "n_eval_solutions": len(ev),
            "n_eval_with_error": sum(s.first_error is not None for s in ev), "arms": arms_out}


def render(res: dict[str, Any]) -> str:
    lines = [f"Seed {res['seed']}: {res['n_eval_solutions']} held-out policy solutions of validation problems "
             f"({res['n_eval_with_error']} with an error), threshold tuned on {res['n_tune_solutions']} others.", "",
             "| PRM | step AUROC | first-step AUROC | ProcessBench-style F1 (erroneous / correct acc.) | train s |",
             "|---|---|---|---|---|"]
    for r in res["arms"]:
        lines.append(f"| {r['arm']} | {r['step_auroc']:.3f} | {r['first_step_auroc']:.3f} | "
                     f"{r['processbench_f1']:.3f} ({r['acc_erroneous']:.3f} / {r['acc_correct']:.3f}) | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    import torch

    from bench import common

    p = argparse.ArgumentParser(prog="python -m bench.prm_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="pos,L0,V200,V400,I200b0.1,I200b0.5,H400,G200")
    p.add_argument("--policy", default=None, help="the SFT policy folder (default: the helps benchmark's)")
    p.add_argument("--out-dir", default=None, help="where the result JSON goes (default bench/results)")
    a = p.parse_args(argv)
    machine, t0 = common.machine_info(torch.device("cpu")), time.time()
    res = run(a.seed, [x.strip() for x in a.arms.split(",") if x.strip()], a.policy)
    name = f"prm-probe-seed{a.seed}"
    payload = {"name": name, "benchmark": "prm_probe", "mode": "select",
               "command": "python -m bench.prm_probe " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": machine, "wall_s": round(time.time() - t0, 1), "load_avg_end": common.load_avg(),
               "rows": [], **res, "markdown": render(res)}
    path = common.write_result(name, payload, Path(a.out_dir) if a.out_dir else common.RESULTS_DIR)
    print(payload["markdown"])
    print(f"wrote {path}; python -m bench.run --markdown-only refreshes BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
