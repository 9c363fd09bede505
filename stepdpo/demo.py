"""The embedded end-to-end demo (``stepdpo demo``): arithmetic task, tiny offline models.

Stages that exist so far: build the task splits, check the gold and corrupted solutions
with the safe checker used as a process reward model, and write ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def run_demo(output_dir: str = "outputs/demo", quick: bool = False, seed: int = 0) -> dict:
    from stepdpo.tasks.arith import ArithConfig, checker_reward_model, make_splits

    t0 = time.time()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = ArithConfig()
    n_train, n_test = (200, 50) if quick else (2000, 500)
    splits = make_splits(seed=seed, n_train=n_train, n_test=n_test, cfg=cfg, error_rate=0.5)
    print(f"[demo] task: {n_train} train / {n_test} test problems, e.g. {splits['train'][0]['prompt']!r}")

    judge = checker_reward_model(cfg)
    test = splits["test"]
    scores = judge.score_steps(test["prompt"], test["steps"])
    agree = sum(s == lab for s, lab in zip(scores, test["labels"])) / len(test)
    print(f"[demo] checker as PRM agrees with the injected-error labels on {agree:.1%} of test solutions")

    metrics = {"n_train": n_train, "n_test": n_test, "checker_label_agreement": agree,
               "seconds": round(time.time() - t0, 2)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"[demo] wrote {out / 'metrics.json'}")
    return metrics
