"""Why Stepwise DPO first hurt the demo policy: the same training on different data.

Every arm trains a copy of one SFT policy with the same :class:`~stepdpo.trainer.StepwiseDPOTrainer`
arguments (``PROTOCOL`` below: the first "does it help" benchmark's protocol, with the demo's earlier
T=1.0 sampled pairs; the fixed number of optimizer steps) and reports greedy
accuracy on the validation problems (never the test problems). NLL-only arms (``loss_type=["sft"]``)
isolate the data from the preference term:

* ``gold, SFT problems`` - gold solutions of problems the policy was trained on (a control: nothing new);
* ``gold, N fresh problems`` - gold solutions of N problems it has never seen;
* ``gold, pair prompts, pair multiplicity`` - the gold solution of each step pair's problem, once per pair
  (problems on which the policy errs often come up several times);
* ``chosen steps, P prompts`` - the chosen steps of first-error step pairs (checker judge) built from
  P prompts x 4 samples (what the NLL term of Stepwise DPO sees);
* ``Stepwise DPO, P prompts`` - sigmoid + NLL on those pairs.

    python -m bench.probe --policy outputs/bench-helps/full/seed0/policy_sft   # reuse the helps run's policy
    python -m bench.probe                                                        # trains the SFT policy first
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The protocol of the first "does it help" run (2026-11-22): sigmoid + NLL, lr 1e-5, batch 64, one epoch.
PROTOCOL = {"dpo_lr": 1e-5, "dpo_beta": 0.1, "dpo_loss": ["sigmoid", "sft"], "dpo_loss_weights": [1.0, 1.0],
            "dpo_epochs": 1.0, "dpo_batch": 64, "dpo_scheduler": "cosine", "dpo_warmup": 0.1}


def run(policy_dir: str | None, out_dir: str, seed: int = 0, steps: int = 39, prompt_counts=(400, 2000),
        fresh_counts=(400, 826)) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from reward_models.testing import tiny_tokenizer
    from stepdpo.demo import DemoConfig, make_data, policy_accuracy, run_stepwise_dpo, train_policy
    from stepdpo.pairs import build_step_pairs
    from stepdpo.sampling import StepSampler
    from stepdpo.tasks.arith import STEP_FORMAT, checker_reward_model, make_samples

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    cfg = replace(DemoConfig(seed=seed), n_test=1000, n_val=500, n_pair_prompts=max(prompt_counts), sft_steps=700,
                  **PROTOCOL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    data = make_data(cfg)
    if policy_dir is None:
        train_policy(cfg, tok, data["sft"], out)
        policy_dir = str(out / "policy_sft")
    val = data["val"]
    base = AutoModelForCausalLM.from_pretrained(policy_dir, use_safetensors=True)
    base.eval()
    c0, n, _ = policy_accuracy(base, tok, val)
    gold_val = [gold_pair(s) for s in val]
    results: list[dict[str, Any]] = [{"arm": "SFT policy (no further training)", "examples": 0, "correct": c0,
                                      "n": n, "gold_logp": gold_logp(base, tok, gold_val)}]

    used = {x.meta["expression"] for k in ("test", "sft", "prm_prompts", "injected", "pair_prompts", "val")
            for x in data[k]}
    arms: list[tuple[str, list, list[str]]] = [("gold, SFT problems", [gold_pair(s) for s in data["sft"][:826]],
                                                ["sft"])]
    for m in fresh_counts:
        fresh = make_samples(m, seed=90_000 + seed, cfg=data["task"], exclude=used)
        arms.append((f"gold, {m} fresh problems", [gold_pair(s) for s in fresh], ["sft"]))
    sampler = StepSampler(base, tok, STEP_FORMAT, max_new_tokens=24, temperature=cfg.temperature, seed=seed + 3,
                          batch_size=256)
    by_expr = {s.meta["expression"]: s for s in data["pair_prompts"]}
    for p_count in prompt_counts:
        prompts = [s.prompt for s in data["pair_prompts"][:p_count]]
        pairs = build_step_pairs(prompts, sampler, checker_reward_model(data["task"]), k=cfg.k, threshold=0.5,
                                 max_steps=8).pairs
        if p_count == min(prompt_counts):
            arms.append((f"gold, {p_count} pair prompts, pair multiplicity",
                         [gold_pair(by_expr[data["task"].expression_of(p.prompt)]) for p in pairs], ["sft"]))
        arms.append((f"chosen steps, {p_count} prompts", pairs, ["sft"]))
        arms.append((f"Stepwise DPO, {p_count} prompts", pairs, list(PROTOCOL["dpo_loss"])))
        if p_count == max(prompt_counts):
            arms.append((f"DPO term only, {p_count} prompts", pairs, ["sigmoid"]))
    for name, rows, loss in arms:
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(policy_dir, use_safetensors=True)
        arm_cfg = replace(cfg, dpo_loss=loss, dpo_loss_weights=[1.0] * len(loss))
        trainer = run_stepwise_dpo(arm_cfg, model, tok, rows, out / "runs", max_steps=steps)
        trainer.model.eval()
        c, n, _ = policy_accuracy(trainer.model, tok, val)
        unique = len({r.prompt for r in rows})
        logged = [h for h in trainer.state.log_history if "logps/chosen" in h]
        results.append({"arm": name, "loss": loss, "examples": len(rows), "unique_problems": unique, "correct": c,
                        "n": n, "seconds": round(time.time() - t0, 1),
                        "gold_logp": gold_logp(trainer.model, tok, gold_val),
                        "train_logps_first": {k: logged[0][k] for k in ("logps/chosen", "logps/rejected")},
                        "train_logps_last": {k: logged[-1][k] for k in ("logps/chosen", "logps/rejected")}})
        logger.info("%s: %d/%d (was %d)", name, c, n, c0)
    return {"policy": policy_dir, "seed": seed, "steps": steps, "protocol": PROTOCOL, "results": results,
            "markdown": render(results, steps)}


def gold_pair(sample):
    """An NLL-only row (the rejected side is unused by the ``"sft"`` loss): the gold solution."""
    from stepdpo.pairs import OutcomePair

    return OutcomePair(prompt=sample.prompt, chosen_steps=list(sample.steps), rejected_steps=list(sample.steps),
                       chosen_score=1.0, rejected_score=0.0)


def gold_logp(model, tokenizer, rows, batch_size: int = 128) -> float:
    """Mean per-token log-probability of the gold solutions ``rows`` (solution tokens and EOS)."""
    import torch

    from stepdpo.tasks.arith import STEP_FORMAT
    from stepdpo.trainer import tokenize_solution_pair

    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(rows), batch_size):
        enc = [tokenize_solution_pair(tokenizer, STEP_FORMAT, r.prompt, r.chosen_steps, r.chosen_steps)
               for r in rows[i: i + batch_size]]
        seqs = [e["prompt_ids"] + e["chosen_ids"] for e in enc]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        target = torch.zeros((len(seqs), width), dtype=torch.bool)
        for r, (e, seq) in enumerate(zip(enc, seqs)):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            target[r, len(e["prompt_ids"]): len(seq)] = True
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        sel = target[:, 1:]
        total += lp[sel].sum().item()
        count += int(sel.sum())
    return total / max(count, 1)


def render(results: list[dict[str, Any]], steps: int) -> str:
    c0 = results[0]["correct"]
    lines = [f"Every arm: {steps} optimizer steps of batch 64 from the same SFT policy, greedy accuracy on "
             f"{results[0]['n']} validation problems.", "",
             "| arm | loss | rows | distinct problems | validation accuracy | change (problems) | "
             "gold log-prob per token (validation) | train log-probs chosen / rejected, first -> last logged |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        loss = "+".join(r.get("loss", [])) or "-"
        tr = "-"
        if "train_logps_first" in r:
            a, b = r["train_logps_first"], r["train_logps_last"]
            tr = (f"{a['logps/chosen']:.2f} / {a['logps/rejected']:.2f} -> "
                  f"{b['logps/chosen']:.2f} / {b['logps/rejected']:.2f}")
        lines.append(f"| {r['arm']} | {loss} | {r['examples'] or '-'} | {r.get('unique_problems', '-')} | "
                     f"{r['correct']}/{r['n']} | {r['correct'] - c0:+d} | {r['gold_logp']:.4f} | {tr} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default=None, help="an SFT policy directory (default: train one, seed 0)")
    p.add_argument("--out-dir", default="outputs/bench-probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=39)
    p.add_argument("--json", default="bench/results/probe.json")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    res = run(args.policy, args.out_dir, args.seed, args.steps)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
