"""Does Stepwise DPO help? Held-out accuracy of the demo task's policy after each kind of training,
on the same sampling budget, for several seeds, paired per problem.

Per seed, everything is built from nothing (the demo's stages, :mod:`stepdpo.demo`):

1. an SFT policy with headroom (tiny GPT-2, 500 steps on 4,000 gold solutions: 35-56% greedy) and a
   PRM (the demo's 2-class head on its backbone; step threshold tuned on validation problems);
2. five arms, each a copy of the SFT policy trained for ``rounds`` rounds; every round samples from
   the arm's *current* policy on the same 4,000 training problems and trains on what it sampled
   (the reference of a DPO round is the policy as the round starts):

   * ``sft`` - no further training;
   * ``rft/checker`` - rejection-sampling fine-tuning: NLL on the right solutions among the samples of
     the Stepwise DPO pipeline (greedy solutions + ``continuations`` rollouts from each error);
   * ``outcome/checker`` - outcome-level DPO: the greedy solution plus ``outcome_samples`` solutions
     per problem at the rollout temperature (a budget at least as large), best vs worst by the answer;
   * ``stepwise/checker`` - the **default recipe**, :class:`~stepdpo.trainer.StepwiseDPOTrainer` from
     prompts with its own rounds: the greedy policy's first error (by the task's checker) is the
     rejected step, the first step of a rollout from the correct prefix that reaches the right answer
     is the chosen one (any checker-valid one otherwise), DPOP loss;
   * ``stepwise/prm`` - the same recipe with the trained PRM locating the errors;

3. after each round, greedy accuracy on validation and test problems, kept per problem; after the
   last, pass@1 at the sampling temperature and maj@8 on the test problems.

Every arm's settings (learning rate, loss, rounds) were chosen on the validation problems of seed 0
(``--mode select``, results in ``bench/results/helps-select.json``); test numbers are reported once.

    python -m bench.run --full --only helps           # 3 seeds x 1,000 test problems
    python -m bench.helps --mode select                # the validation sweep behind PROTOCOLS
    python -m bench.helps --mode full --task habit --seeds 0 --arms rft/checker,stepwise/checker
    python -m bench.helps --mode quick --seeds 0
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ARMS = ("sft", "rft/checker", "outcome/checker", "stepwise/checker", "stepwise/prm")
LABELS = {"sft": "SFT policy", "rft/checker": "RFT (NLL on right samples)", "outcome/checker": "outcome DPO",
          "stepwise/checker": "Stepwise DPO (default recipe)", "stepwise/prm": "Stepwise DPO, PRM judge",
          "rft_steps/checker": "NLL on the chosen steps"}


@dataclass
class Protocol:
    """How one arm trains (per round) and for how many rounds."""

    kind: str  # "stepwise" | "rft" | "rft_steps" | "outcome"
    rounds: int = 3
    steps: int = 200  # optimizer steps per round
    lr: float = 1e-5
    batch: int = 32
    loss: list[str] = field(default_factory=lambda: ["dpop"])
    beta: float = 0.1
    dpop_lambda: float = 50.0
    loss_weights: list[float] | None = None  # None: 1.0 per loss
    replay: float = 0.0  # weight of NLL on the right solutions among the round's samples (stepwise, outcome)


# Chosen on seed 0's validation problems (``--mode select``; BENCHMARKS.md shows the sweep). Rounds are 3 for
# every arm (the compute budget of a 3-seed run on 2 CPU cores); within that each arm takes its best validation
# setting. Outcome DPO gets the same hybrid recipe as Stepwise DPO (DPOP weighted 0.01 + NLL replay of the round's
# right samples, lr 1e-4), so that only the pairs differ; without replay it stayed far below RFT on validation.
PROTOCOLS: dict[str, Protocol] = {
    "stepwise/checker": Protocol("stepwise", rounds=3, lr=1e-4, loss_weights=[0.01], replay=1.0),
    "rft/checker": Protocol("rft", rounds=3, lr=1e-4, loss=["sft"]),
    "outcome/checker": Protocol("outcome", rounds=3, lr=1e-4, loss_weights=[0.01], replay=1.0),
    "stepwise/prm": Protocol("stepwise", rounds=3, lr=1e-4, loss_weights=[0.01], replay=1.0),
}


@dataclass
class Sampling:
    """The sampling budget, the same for every arm."""

    continuations: int = 8  # rollouts from each error's correct prefix (stepwise, rft)
    rollout_temperature: float = 0.8
    outcome_samples: int = 4  # extra solutions per problem for outcome DPO (plus the greedy one)
    eval_samples: int = 8  # pass@1 / maj@k on the test problems
    max_new_tokens: int = 24
    max_steps: int = 8


@dataclass
class HelpsSize:
    seeds: list[int]
    demo: dict[str, Any]  # DemoConfig fields
    workers: int = 2
    protocols: dict[str, Protocol] = field(default_factory=lambda: copy.deepcopy(PROTOCOLS))
    sampling: Sampling = field(default_factory=Sampling)
    arms: tuple[str, ...] = ARMS


def sizes(mode: str, task: str = "default") -> HelpsSize:
    size = _sizes(mode)
    if task == "habit":
        size.demo.update(HABIT)
    elif task != "default":
        raise ValueError(f"task must be 'default' or 'habit', got {task!r}")
    return size


def _sizes(mode: str) -> HelpsSize:
    if mode == "full":
        # the PRM at the recipe's bench size: 400 steps of next-token training (the demo affords 200 in its 10 minutes)
        return HelpsSize(seeds=[0, 1, 2], workers=3, demo={"n_test": 1000, "n_val": 400, "n_pair_prompts": 4000,
                                                           "sft_steps": 500, "prm_steps": 400, "prm_lr": 1e-3})
    if mode == "quick":
        protos = {k: replace(v, rounds=2, steps=60, batch=16) for k, v in PROTOCOLS.items()}
        return HelpsSize(seeds=[0], workers=1, protocols=protos, sampling=Sampling(continuations=4),
                         demo={"quick": True, "n_pair_prompts": 300})
    # smoke: seconds; the numbers mean nothing, the plumbing is exercised
    protos = {k: replace(v, rounds=2, steps=2, batch=4) for k, v in PROTOCOLS.items()}
    return HelpsSize(seeds=[0], workers=1, protocols=protos,
                     sampling=Sampling(continuations=2, outcome_samples=2, eval_samples=2, max_steps=4),
                     demo={"quick": True, "n_test": 12, "n_sft": 600, "n_prm_prompts": 10, "n_pair_prompts": 24,
                           "n_val": 8, "sft_steps": 300, "prm_steps": 3, "prm_injected": 10})


def select_grid() -> dict[str, list[Protocol]]:
    """The validation sweep (seed 0): each arm's candidates, every round evaluated on validation.

    Run in two passes (``--entries``): first DPOP alone and the baselines; then, as RFT's NLL on the
    right samples beat DPOP alone, DPOP added to that same NLL (``replay``) for Stepwise DPO and for
    outcome DPO alike (entries from index 2 and 4)."""
    r = 4
    return {
        "stepwise/checker": [Protocol("stepwise", rounds=r, lr=lr) for lr in (1e-5, 3e-5)] +
                            [Protocol("stepwise", rounds=r, lr=1e-4, loss_weights=[w], replay=1.0)
                             for w in (0.003, 0.01, 0.03)],
        "rft/checker": [Protocol("rft", rounds=r, lr=lr, loss=["sft"]) for lr in (3e-5, 1e-4, 3e-4)],
        "rft_steps/checker": [Protocol("rft_steps", rounds=r, lr=1e-5, loss=["sft"])],
        "outcome/checker": [Protocol("outcome", rounds=r, lr=lr, loss=loss)
                            for lr in (1e-5, 3e-5) for loss in (["dpop"], ["sigmoid", "sft"])] +
                           [Protocol("outcome", rounds=r, lr=1e-4, loss_weights=[w], replay=1.0)
                            for w in (0.01, 0.03)],
    }


SFT_FIELDS = ("seed", "task", "n_test", "n_sft", "policy_layers", "policy_width", "policy_heads", "sft_steps", "sft_lr",
              "sft_batch", "sft_habit", "sft_habit_rate")
# The task variant with imperfect demonstrations: half of the SFT solutions' carrying additions forget the carry.
HABIT = {"sft_habit": "carry", "sft_habit_rate": 0.5}


def demo_config(size: HelpsSize, seed: int):
    from stepdpo.demo import DemoConfig

    fields = dict(size.demo)
    quick = fields.pop("quick", False)
    cfg = DemoConfig.quick(seed) if quick else DemoConfig(seed=seed)
    return replace(cfg, **fields)


# -- one arm ---------------------------------------------------------------------------------------
class _Evaluator:
    """Greedy accuracy on validation and test problems after each round, kept per problem."""

    def __init__(self, tok, data, test: bool = True):
        self.tok, self.data, self.test, self.rounds = tok, data, test, []

    def __call__(self, model, extra: dict[str, Any]) -> dict[str, Any]:
        from stepdpo.demo import policy_results

        model.eval()
        val, _ = policy_results(model, self.tok, self.data["val"])
        row = {"round": len(self.rounds), "val_correct": sum(val), "n_val": len(val), **extra}
        if self.test:
            test, _ = policy_results(model, self.tok, self.data["test"])
            row.update(test_correct=sum(test), n_test=len(test), test_right=[int(x) for x in test])
        self.rounds.append(row)
        logger.info("round %d: validation %d/%d%s", row["round"], row["val_correct"], row["n_val"],
                    f", test {row['test_correct']}/{row['n_test']}" if self.test else "")
        return row


def _train_log(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """What moved during one round: train log-probs of chosen/rejected and reward accuracy, first -> last."""
    logged = [h for h in log_history if "logps/chosen" in h]
    if not logged:
        return {}
    keys = ("logps/chosen", "logps/rejected", "rewards/accuracies", "rewards/margins", "probe/logps_chosen",
            "probe/logps_rejected", "probe/prefers_chosen")
    return {"train_first": {k: logged[0][k] for k in keys if k in logged[0]},
            "train_last": {k: logged[-1][k] for k in keys if k in logged[-1]}}


def _samplers(policy, tok, sampling: Sampling, seed: int, round_index: int):
    from stepdpo.sampling import StepSampler
    from stepdpo.tasks.arith import STEP_FORMAT

    def at(temperature, s):
        return StepSampler(policy, tok, STEP_FORMAT, max_new_tokens=sampling.max_new_tokens, temperature=temperature,
                           seed=s, batch_size=256)

    # the seeds StepwiseDPOTrainer uses for round r (args.seed + 7919 r, rollouts + 104729): same samples
    base = seed + 7919 * round_index
    return at(0.0, base), at(sampling.rollout_temperature, base + 104729)


def dpo_config(proto: Protocol, out: Path, seed: int, **extra):
    from stepdpo.config import StepwiseDPOConfig

    return StepwiseDPOConfig(
        output_dir=str(out), learning_rate=proto.lr, beta=proto.beta, loss_type=list(proto.loss),
        loss_weights=list(proto.loss_weights) if proto.loss_weights else [1.0] * len(proto.loss),
        replay_weight=proto.replay, dpop_lambda=proto.dpop_lambda, max_steps=proto.steps,
        per_device_train_batch_size=proto.batch,
        logging_steps=max(1, proto.steps // 10), save_strategy="no", report_to=[], seed=seed, use_cpu=not _cuda(),
        disable_tqdm=True, gradient_checkpointing=False, lr_scheduler_type="cosine", warmup_steps=0.1,
        step_separator="\n", **extra)


def run_stepwise(policy, tok, data, judge, threshold: float, proto: Protocol, sampling: Sampling, seed: int,
                 out: Path, evaluate: _Evaluator):
    """The default recipe through the trainer's own rounds (prompts in, pairs built each round)."""
    from transformers import TrainerCallback

    from stepdpo.demo import pair_quality
    from stepdpo.tasks.arith import is_correct
    from stepdpo.trainer import StepwiseDPOTrainer

    prompts = [s.prompt for s in data["pair_prompts"]]
    answers = [s.meta["expression"] for s in data["pair_prompts"]]
    args = dpo_config(proto, out, seed, rounds=proto.rounds, regenerate_every_steps=proto.steps,
                      sample_temperature=0.0, rollout_temperature=sampling.rollout_temperature,
                      num_continuations=sampling.continuations, sample_max_new_tokens=sampling.max_new_tokens,
                      max_solution_steps=sampling.max_steps, sample_batch_size=256, score_threshold=threshold,
                      probe_pairs=64)

    holder: dict[str, Any] = {}

    class RoundEnd(TrainerCallback):
        def on_train_end(self, targs, state, control, model=None, **kw):
            tr = holder["trainer"]
            evaluate(tr.accelerator.unwrap_model(tr.model),
                     {"pairs": tr.pair_stats[-1]["pairs"], "pair_stats": tr.pair_stats[-1],
                      "pair_quality": pair_quality(tr.last_pairs, data["task"]), **_train_log(state.log_history)})
            tr.model.train()

    from stepdpo.trainer import NoPairsError

    try:
        trainer = StepwiseDPOTrainer(model=policy, args=args, tokenizer=tok, prompts=prompts, reward_model=judge,
                                     answers=answers, answer_checker=lambda p, steps, a: is_correct(a, steps),
                                     callbacks=[RoundEnd()])
        holder["trainer"] = trainer
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
    except NoPairsError as e:  # a round without pairs ends the arm: the rounds left are recorded untrained
        logger.warning("%s", e)
        model = holder["trainer"].accelerator.unwrap_model(holder["trainer"].model) if "trainer" in holder else policy
        while len(evaluate.rounds) <= proto.rounds:
            evaluate(model, {"pairs": 0, "no_pairs": str(e)})
    return model


def run_baseline(policy, tok, data, proto: Protocol, sampling: Sampling, seed: int, out: Path,
                 evaluate: _Evaluator):
    """RFT (NLL on right samples or on chosen steps) and outcome DPO, each sampling from its current
    policy every round with the same budget as the Stepwise DPO pipeline."""
    from stepdpo.pairs import build_outcome_pairs, build_step_pairs, right_samples
    from stepdpo.sft import train_sft
    from stepdpo.tasks.arith import STEP_FORMAT, checker_reward_model, is_correct
    from stepdpo.trainer import StepwiseDPOTrainer

    prompts = [s.prompt for s in data["pair_prompts"]]
    answers = [s.meta["expression"] for s in data["pair_prompts"]]

    def check(p, steps, a):
        return is_correct(a, steps)

    for r in range(proto.rounds):
        greedy, roll = _samplers(policy, tok, sampling, seed, r)
        if proto.kind in ("rft", "rft_steps"):
            built = build_step_pairs(prompts, greedy, checker_reward_model(data["task"]), k=sampling.continuations,
                                     max_steps=sampling.max_steps, answers=answers, answer_checker=check,
                                     num_continuations=sampling.continuations, rollout_sampler=roll)
            if proto.kind == "rft":
                right = right_samples(prompts, built.samples)
                extra = {"examples": len(right), "pair_stats": built.stats}
                if right:
                    trainer = train_sft(policy, tok, right, output_dir=str(out / f"round{r}"),
                                        step_format=STEP_FORMAT, max_steps=proto.steps, learning_rate=proto.lr,
                                        batch_size=proto.batch, seed=seed + r)
                    policy = trainer.model
                evaluate(policy, extra)
                continue
            train = built.pairs
            extra = {"pairs": len(train), "pair_stats": built.stats}
        else:
            sols = greedy.sample_solution_details(prompts, k=1, max_steps=sampling.max_steps)
            more = roll.sample_solution_details(prompts, k=sampling.outcome_samples, max_steps=sampling.max_steps)
            rows = [a + b for a, b in zip(sols, more)]
            built = build_outcome_pairs(prompts, rows, answers=answers, answer_checker=check)
            train = built.pairs
            replay = None
            if proto.replay:  # the right ones among the same samples, labeled as pair building labels them
                for p, a, row in zip(prompts, answers, rows):
                    for sol in row:
                        sol.meta["correct"] = check(p, sol.steps, a)
                replay = right_samples(prompts, rows)
            extra = {"pairs": len(train), "pair_stats": built.stats, "replayed": len(replay or [])}
        if train:
            ref = copy.deepcopy(policy)
            args = dpo_config(proto, out / f"round{r}", seed + r,
                              **({"replay_source": "dataset"} if proto.replay else {}))
            trainer = StepwiseDPOTrainer(model=policy, ref_model=ref, args=args, tokenizer=tok, train_dataset=train,
                                         replay_dataset=replay if proto.replay else None)
            trainer.train()
            policy = trainer.model
            extra.update(_train_log(trainer.state.log_history))
            del trainer, ref
        evaluate(policy, extra)
    return policy


# -- one seed --------------------------------------------------------------------------------------
# the default recipe first: a run cut short keeps the arms that matter most (result.partial.json)
RUN_ORDER = ("stepwise/checker", "rft/checker", "outcome/checker", "stepwise/prm")


def run_seed(size: HelpsSize, seed: int, work_dir: str, threads: int = 1,
             select: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """All arms for one seed (or, with ``select``, those entries of the validation sweep); JSON-able."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, set_seed

    from reward_models.base import load_reward_model
    from reward_models.testing import tiny_tokenizer
    from stepdpo.demo import (
        best_of_n_at_chosen_temperature,
        evaluate_tuned,
        make_data,
        policy_results,
        prm_baselines,
        prm_data,
        sampled_results,
        train_policy,
        train_prm,
    )
    from stepdpo.tasks.arith import checker_reward_model

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
    sft_dir = out / "policy_sft"
    t0 = time.time()
    sft_key = json.dumps({k: v for k, v in asdict(cfg).items() if k in SFT_FIELDS}, sort_keys=True)
    if (sft_dir / "model.safetensors").exists() and (out / "sft_config.json").exists() and \
            (out / "sft_config.json").read_text() == sft_key:  # a rerun of the same seed reuses its SFT policy
        policy = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True)
    else:
        policy, _ = train_policy(cfg, tok, data["sft"], out)
        (out / "sft_config.json").write_text(sft_key)
    policy.eval()
    tick("sft", t0)

    def fresh():
        return AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True)

    arms: dict[str, Any] = {}
    if select is not None:
        for key, n in select:
            proto = select_grid()[key][n]
            t0 = time.time()
            ev = _Evaluator(tok, data, test=False)
            ev(fresh(), {})  # round 0 = the SFT policy
            where = out / "select" / f"{key.replace('/', '_')}-{n}"
            if proto.kind == "stepwise":
                run_stepwise(fresh(), tok, data, checker_reward_model(data["task"]), 0.5, proto, size.sampling, seed,
                             where, ev)
            else:
                run_baseline(fresh(), tok, data, proto, size.sampling, seed, where, ev)
            arms[f"{key}#{n}"] = {"arm": key, "protocol": asdict(proto), "val": [r["val_correct"] for r in ev.rounds],
                                  "n_val": ev.rounds[0]["n_val"],
                                  "rounds": [{k: v for k, v in r.items() if k != "test_right"} for r in ev.rounds]}
            (where / "select_entry.json").write_text(json.dumps(arms[f"{key}#{n}"], default=str) + "\n")
            tick(f"select {key} #{n}", t0)
        return {"seed": seed, "select": arms, "timings_s": timings}

    def finish(key: str, model, ev: _Evaluator, proto: Protocol | None, t0: float):
        sampled = sampled_results(model, tok, data["test"], k=size.sampling.eval_samples,
                                  temperature=size.sampling.rollout_temperature, seed=seed + 4)
        final = ev.rounds[-1]
        arms[key] = {"label": LABELS[key], "protocol": asdict(proto) if proto else None,
                     "correct": final["test_correct"], "n": final["n_test"],
                     "accuracy": final["test_correct"] / final["n_test"], "test_right": final["test_right"],
                     "val_correct": final["val_correct"], "n_val": final["n_val"],
                     "pass_at_1": sampled["pass_at_1"], "maj_at_k": sampled[f"maj_at_{sampled['k']}"],
                     "sampled_k": sampled["k"], "sampled_n_right": sampled["n_right"],
                     "rounds": [{k: v for k, v in r.items() if k != "test_right"} for r in ev.rounds]}
        tick(key, t0)
        (out / "result.partial.json").write_text(json.dumps(arms, default=str) + "\n")

    prm_eval, threshold, prm_report = None, None, None

    def prm_judge():  # trained when the first arm that needs it starts
        nonlocal prm_eval, threshold, prm_report
        t0 = time.time()
        prm_train, prm_val, prm_test = prm_data(cfg, policy, tok, data)
        # a rerun of the same seed with the same PRM settings reuses the trained PRM and its report
        prm_key = json.dumps({k: v for k, v in asdict(cfg).items() if k in SFT_FIELDS or k.startswith("prm_")
                              or k in ("n_prm_gold", "n_prm_prompts", "temperature")}, sort_keys=True)
        cached = out / "prm_report.json"
        if cached.exists() and json.loads(cached.read_text()).get("key") == prm_key:
            prm = load_reward_model(out / "prm")
            prm_report = json.loads(cached.read_text())["report"]
        else:
            prm_dir, _ = train_prm(cfg, tok, sft_dir, prm_train, out)
            prm = load_reward_model(prm_dir)
        ev, threshold = evaluate_tuned(prm, prm_val, prm_test)
        prm_eval = ev.to_dict()
        tick("prm", t0)
        if prm_report is None:
            t0 = time.time()
            # beside it: the baselines on the same samples, and reranking the SFT policy's samples (best-of-8 at the
            # temperature chosen on validation problems vs majority vote over the same 8)
            bon_cfg = replace(cfg, best_of_n=8, n_best_of_n=len(data["test"]),
                              n_best_of_n_val=min(200, len(data["val"])))
            prm_report = {"kind": cfg.prm_kind, "steps": cfg.prm_steps,
                          "baselines": prm_baselines(policy, tok, prm_val, prm_test),
                          "n_val_samples": len(prm_val), "n_test_samples": len(prm_test),
                          "best_of_n": best_of_n_at_chosen_temperature(bon_cfg, policy, tok, data, prm)}
            cached.write_text(json.dumps({"key": prm_key, "report": prm_report}, default=str) + "\n")
            tick("prm_report", t0)
        return prm, threshold

    t0 = time.time()
    ev = _Evaluator(tok, data)
    ev(policy, {})
    finish("sft", policy, ev, None, t0)
    for key in RUN_ORDER:
        if key not in size.arms:
            continue
        proto = size.protocols[key]
        t0 = time.time()
        ev = _Evaluator(tok, data)
        ev(fresh(), {})
        if proto.kind == "stepwise":
            judge, thr = (checker_reward_model(data["task"]), 0.5) if key.endswith("/checker") else prm_judge()
            model = run_stepwise(fresh(), tok, data, judge, thr, proto, size.sampling, seed, out / key.replace("/", "_"),
                                 ev)
        else:
            model = run_baseline(fresh(), tok, data, proto, size.sampling, seed, out / key.replace("/", "_"), ev)
        finish(key, model, ev, proto, t0)
    policy = None  # free it (prm_judge, the one other user, ran before)
    sft_right, _ = policy_results(fresh(), tok, data["test"])
    assert [int(x) for x in sft_right] == arms["sft"]["test_right"], "the SFT policy reloaded must score the same"
    timings["total"] = round(time.time() - t_all, 1)
    result = {"seed": seed, "config": asdict(cfg), "arms": arms, "prm": prm_eval, "prm_threshold": threshold,
              "prm_report": prm_report, "timings_s": timings}
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def _worker(args) -> dict[str, Any]:
    size, seed, work_dir, threads, select = args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not select:
        return run_seed(size, seed, work_dir, threads, select)
    try:  # a failing sweep entry must not lose the others
        return run_seed(size, seed, work_dir, threads, select)
    except Exception as e:  # noqa: BLE001 - reported with its traceback, the run exits non-zero
        import traceback

        logger.error("select entry %s failed:\n%s", select, traceback.format_exc())
        return {"seed": seed, "select": {}, "failed": {f"{k}#{n}": repr(e) for k, n in select}}


# -- all seeds, summary ------------------------------------------------------------------------------
def run(mode: str, device, threads: int = 1, work_dir: str | None = None, seeds: list[int] | None = None,
        task: str = "default", entries: list[str] | None = None, arms: list[str] | None = None) -> dict[str, Any]:
    select = mode == "select"
    size = sizes("full" if select else mode, task)
    if seeds is not None:
        size.seeds = list(seeds)
    if arms is not None:
        size.arms = ("sft", *[a for a in ARMS if a in arms and a != "sft"])
    work = work_dir or os.path.join("outputs", "bench-helps", ("full" if select else mode) +
                                    ("" if task == "default" else f"-{task}"))
    if select:  # seed 0's SFT policy first, then the grid entries two at a time
        _worker((size, 0, work, threads, []))
        grid = [(key, n) for key, protos in select_grid().items() for n in range(len(protos))]
        if entries:
            unknown = set(entries) - {f"{k}#{n}" for k, n in grid}
            if unknown:
                raise SystemExit(f"unknown --entries {sorted(unknown)}; the grid has " +
                                 ", ".join(f"{k}#{n}" for k, n in grid))
            grid = [(k, n) for k, n in grid if f"{k}#{n}" in entries]
        jobs = [(size, 0, work, threads, [e]) for e in grid]
    else:
        jobs = [(size, s, work, threads, None) for s in size.seeds]
    if size.workers > 1 and len(jobs) > 1 and device.type != "cuda":
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(size.workers, len(jobs))) as pool:
            per_seed = pool.map(_worker, jobs, chunksize=1)
    else:
        per_seed = [_worker(j) for j in jobs]
    if select:
        merged = {"seed": 0, "select": {k: v for r in per_seed for k, v in r["select"].items()}}
        failed = {k: v for r in per_seed for k, v in r.get("failed", {}).items()}
        return {"rows": [], "select": merged, "failed": failed, "markdown": render_select(merged)}
    summary = summarize(per_seed)
    return {"rows": [], "task": task, "per_seed": per_seed, "summary": summary,
            "protocols": {k: asdict(v) for k, v in size.protocols.items()}, "sampling": asdict(size.sampling),
            "markdown": render(summary, per_seed, size)}


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


COMPARISONS = [("stepwise/checker", "sft"), ("stepwise/checker", "rft/checker"),
               ("stepwise/checker", "outcome/checker"), ("rft/checker", "sft"), ("outcome/checker", "sft"),
               ("stepwise/prm", "sft"), ("stepwise/checker", "stepwise/prm")]


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    from stepdpo.report import paired_difference

    keys = [k for k in ARMS if all(k in r["arms"] for r in per_seed)]
    arms = {}
    for key in keys:
        rows = [r["arms"][key] for r in per_seed]
        acc = [r["accuracy"] for r in rows]
        delta = [r["accuracy"] - s["arms"]["sft"]["accuracy"] for r, s in zip(rows, per_seed)]
        arms[key] = {"label": rows[0]["label"], "accuracy": _mean_sd(acc), "delta": _mean_sd(delta), "per_seed": acc,
                     "pass_at_1": _mean_sd([r["pass_at_1"] for r in rows]),
                     "maj_at_k": _mean_sd([r["maj_at_k"] for r in rows]), "k": rows[0]["sampled_k"],
                     "rounds": rows[0]["protocol"]["rounds"] if rows[0]["protocol"] else 0,
                     "pairs_last_round": [r["rounds"][-1].get("pairs", r["rounds"][-1].get("examples"))
                                          for r in rows]}
    comparisons = []
    for a, b in COMPARISONS:
        if a in arms and b in arms:
            per = [paired_difference(r["arms"][a]["test_right"], r["arms"][b]["test_right"]) for r in per_seed]
            diffs = [p["diff"] for p in per]
            comparisons.append({"a": a, "b": b, "per_seed": per, "mean_sd": _mean_sd(diffs)})
    trained = [r["prm"] for r in per_seed if r.get("prm")]  # the PRM is trained only when an arm uses it
    prm = {"first_error_f1": _mean_sd([p["first_error"]["f1"] for p in trained]),
           "step_auroc": _mean_sd([p["steps"]["auroc"] for p in trained])}
    reports = [r["prm_report"] for r in per_seed if r.get("prm_report")]
    if reports and len(reports) == len(trained):
        prm["kind"] = reports[0]["kind"]
        for name in ("position", "policy_likelihood"):
            prm[name] = {"first_error_f1": _mean_sd([r["baselines"][name]["first_error"]["f1"] for r in reports]),
                         "step_auroc": _mean_sd([r["baselines"][name]["steps"]["auroc"] for r in reports])}
        prm["best_of_n"] = [{k: r["best_of_n"][k] for k in ("temperature", "problems", "n", "best_of_n_prm",
                                                            "prm_weighted_vote", "majority_vote", "pass_at_n",
                                                            "best_of_n", "weighted_vote")} for r in reports]
    if "stepwise/prm" in arms:
        prm["pairs_right"] = [[rd["pair_quality"]["both"] for rd in r["arms"]["stepwise/prm"]["rounds"]
                               if "pair_quality" in rd] for r in per_seed]
    return {"arms": arms, "comparisons": comparisons, "prm": prm, "seeds": [r["seed"] for r in per_seed],
            "n_test": per_seed[0]["arms"]["sft"]["n"], "targets": targets(arms, comparisons),
            "prm_targets": prm_targets(prm, arms)}


def prm_targets(prm: dict[str, Any], arms: dict[str, Any]) -> dict[str, Any]:
    """Issue 13's bar for the default PRM recipe: ProcessBench-style F1 >= 0.8 and step AUROC >= 0.95 (mean over
    seeds), best-of-8 by the PRM above majority vote on every seed, pairs built with the PRM as judge right >= 90% of
    the time (every round of every seed), Stepwise DPO with the PRM as judge within 1 point of the checker judge."""
    out: dict[str, Any] = {}
    if prm["step_auroc"][0] == prm["step_auroc"][0]:
        out["f1_auroc"] = prm["first_error_f1"][0] >= 0.8 and prm["step_auroc"][0] >= 0.95
    if prm.get("best_of_n"):
        out["best_of_8_beats_vote"] = all(b["best_of_n_prm"] > b["majority_vote"] for b in prm["best_of_n"])
    if prm.get("pairs_right") and all(prm["pairs_right"]):
        out["pairs_right_90"] = min(min(r) for r in prm["pairs_right"]) >= 0.9
    if "stepwise/prm" in arms and "stepwise/checker" in arms:
        out["within_1_point"] = abs(arms["stepwise/prm"]["accuracy"][0] - arms["stepwise/checker"]["accuracy"][0]) \
            <= 0.01
    return out


def targets(arms: dict[str, Any], comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar for the default recipe (stepwise/checker): >= +5 points over SFT on every seed,
    ahead of RFT and of outcome DPO on every seed, paired mean differences larger than their spread."""
    out = {}
    for comp in comparisons:
        if comp["a"] != "stepwise/checker" or comp["b"] not in ("sft", "rft/checker", "outcome/checker"):
            continue
        diffs = [p["diff"] for p in comp["per_seed"]]
        mean, sd = comp["mean_sd"]
        bar = 0.05 if comp["b"] == "sft" else 0.0
        out[comp["b"]] = {"every_seed": all(d >= bar if bar else d > 0 for d in diffs), "mean_above_sd": mean > sd,
                          "bar": bar}
    return out


def _f3(ms: tuple[float, float]) -> str:
    """Mean ± SD with 3 decimals ('n/a' when undefined, e.g. no erroneous solution in a smoke run)."""
    m, s = ms
    return "n/a" if m != m else f"{m:.3f} ± {s:.3f}"


def _pct(ms: tuple[float, float], signed: bool = False) -> str:
    m, s = ms
    if m != m:
        return "n/a"
    return f"{m * 100:+.1f} ± {s * 100:.1f}" if signed else f"{m * 100:.1f} ± {s * 100:.1f}"


def _protocol_text(p: Protocol) -> str:
    weights = "" if p.loss_weights is None else " weighted " + "/".join(f"{w:g}" for w in p.loss_weights)
    replay = f" + NLL replay of the round's right samples (weight {p.replay:g})" if p.replay else ""
    return (f"{'+'.join(p.loss)}{weights}{replay}, lr {p.lr:g}, {p.rounds} rounds x {p.steps} steps of batch "
            f"{p.batch}" + (f", beta {p.beta:g}, λ {p.dpop_lambda:g}" if "dpop" in p.loss else ""))


def render(summary: dict[str, Any], per_seed: list[dict[str, Any]], size: HelpsSize) -> str:
    n_test = summary["n_test"]
    k = next(iter(summary["arms"].values()))["k"]
    lines = [f"Seeds {summary['seeds']}, {n_test} held-out test problems per seed; accuracy = greedy, by the checker; "
             f"pass@1 and maj@{k} from {k} samples at T={size.sampling.rollout_temperature}. Mean ± standard "
             "deviation over seeds; Δ = arm minus the same seed's SFT policy.", "",
             f"| arm | rounds | accuracy % | Δ vs SFT (points) | per seed % | pass@1 % | maj@{k} % |",
             "|---|---|---|---|---|---|---|"]
    for key, a in summary["arms"].items():
        per = ", ".join(f"{x * 100:.1f}" for x in a["per_seed"])
        delta = "-" if key == "sft" else _pct(a["delta"], signed=True)
        lines.append(f"| {a['label']} (`{key}`) | {a['rounds'] or '-'} | {_pct(a['accuracy'])} | {delta} | {per} | "
                     f"{_pct(a['pass_at_1'])} | {_pct(a['maj_at_k'])} |")
    lines += ["", "Paired differences on the same test problems (per seed: difference ± its standard error from the "
                  "per-problem differences, problems gained/lost; then mean ± standard deviation over seeds):", ""]
    for comp in summary["comparisons"]:
        per = "; ".join(f"{p['diff'] * 100:+.1f} ± {p['se'] * 100:.1f} (+{p['gained']}/-{p['lost']})"
                        for p in comp["per_seed"])
        lines.append(f"- {LABELS[comp['a']]} minus {LABELS[comp['b']]}: **{_pct(comp['mean_sd'], signed=True)}** "
                     f"(per seed {per})")
    t = summary["targets"]
    if t:
        lines += ["", "Targets for the default recipe: " + "; ".join(
            f"vs {LABELS[b]}: {'met' if v['every_seed'] and v['mean_above_sd'] else '**not met**'} (every seed "
            f"{'≥ +5 points' if v['bar'] else '> 0'}: {v['every_seed']}, mean > spread: {v['mean_above_sd']})"
            for b, v in t.items())]
    lines += ["", "- Protocols (chosen on seed 0's validation problems): " + "; ".join(
        f"{LABELS[key]}: {_protocol_text(proto)}" for key, proto in size.protocols.items() if key in summary["arms"])
        + "."]
    p = summary["prm"]
    lines += [] if math.isnan(p["step_auroc"][0]) and "kind" not in p else [
        f"- PRM (the `stepwise/prm` judge{', kind ' + repr(p['kind']) if 'kind' in p else ''}; held-out policy "
        f"samples, validation-tuned threshold): ProcessBench-style F1 {_f3(p['first_error_f1'])}, step AUROC "
        f"{_f3(p['step_auroc'])}" + (
            f"; beside it on the same samples, the step position alone: F1 {_f3(p['position']['first_error_f1'])}, "
            f"AUROC {_f3(p['position']['step_auroc'])}; the SFT policy's own token probabilities (no training): "
            f"F1 {_f3(p['policy_likelihood']['first_error_f1'])}, AUROC {_f3(p['policy_likelihood']['step_auroc'])}"
            if "position" in p else "") + "."]
    if p.get("best_of_n"):
        lines.append("- Reranking the SFT policy's samples with the PRM (per seed; best-of-8 / PRM-weighted vote / "
                     "majority vote / pass@8, at the temperature chosen on validation problems): " + "; ".join(
                         f"T={b['temperature']}: {b['best_of_n_prm']:.1%} / {b['prm_weighted_vote']:.1%} / "
                         f"{b['majority_vote']:.1%} / {b['pass_at_n']:.1%}" for b in p["best_of_n"])
                     + ". Best-of-8 by aggregation (min / prod / mean / last), seed " + str(summary["seeds"][0]) + ": "
                     + " / ".join(f"{v:.1%}" for v in p["best_of_n"][0]["best_of_n"].values()) + ".")
    if p.get("pairs_right") and all(p["pairs_right"]):
        lines.append("- Pairs built with the PRM as judge that are right by the checker (chosen valid, rejected "
                     "invalid), per round, per seed: " + "; ".join(
                         " / ".join(f"{x:.1%}" for x in r) for r in p["pairs_right"]) + ".")
    if summary.get("prm_targets"):
        names = {"f1_auroc": "F1 >= 0.8 and AUROC >= 0.95", "best_of_8_beats_vote": "best-of-8 > majority vote, "
                 "every seed", "pairs_right_90": "PRM pairs right >= 90%", "within_1_point":
                 "Stepwise DPO with the PRM within 1 point of the checker"}
        lines.append("- PRM targets (issue 13): " + "; ".join(
            f"{names[k]}: {'met' if v else '**not met**'}" for k, v in summary["prm_targets"].items()) + ".")
    lines.append("- Accuracy per round (test, then validation, correct problems; round 0 = SFT):")
    for key in summary["arms"]:
        if key == "sft":
            continue
        per = "; ".join(" -> ".join(f"{r['test_correct']}" for r in s["arms"][key]["rounds"]) + " (val " +
                        " -> ".join(f"{r['val_correct']}" for r in s["arms"][key]["rounds"]) + ")" for s in per_seed)
        lines.append(f"  - {LABELS[key]}: {per}")
    lines.append(f"- What moved, seed {per_seed[0]['seed']}, per round (DPO arms: training log-probs of chosen / "
                 "rejected, first -> last logged batch; Stepwise DPO also the 64 fixed probe pairs):")
    for key in summary["arms"]:
        rows = [r for r in per_seed[0]["arms"][key]["rounds"] if r.get("train_first")]
        if not rows:
            continue
        parts = []
        for r in rows:
            a, b = r["train_first"], r["train_last"]
            text = (f"r{r['round']}: {a['logps/chosen']:.2f} / {a['logps/rejected']:.2f} -> "
                    f"{b['logps/chosen']:.2f} / {b['logps/rejected']:.2f}")
            if "probe/logps_chosen" in a:
                text += (f" (probe {a['probe/logps_chosen']:.2f} / {a['probe/logps_rejected']:.2f} -> "
                         f"{b['probe/logps_chosen']:.2f} / {b['probe/logps_rejected']:.2f}, prefers chosen "
                         f"{a['probe/prefers_chosen']:.0%} -> {b['probe/prefers_chosen']:.0%})")
            parts.append(text)
        lines.append(f"  - {LABELS[key]}: " + "; ".join(parts))
    lines.append(f"- Sampling per round and arm: greedy solutions of the {per_seed[0]['config']['n_pair_prompts']:,} "
                 "training problems, then "
                 f"{size.sampling.continuations} rollouts at T={size.sampling.rollout_temperature} from each error "
                 f"(stepwise, RFT) or {size.sampling.outcome_samples} more solutions per problem (outcome DPO).")
    return "\n".join(lines)


def _entry_order(name: str) -> tuple[int, int]:
    keys = list(select_grid())
    key, n = name.split("#")
    return keys.index(key), int(n)


def render_select(result: dict[str, Any]) -> str:
    lines = ["Validation sweep, seed 0: correct validation problems after each round (round 0 = the SFT policy; "
             f"{next(iter(result['select'].values()))['n_val']} problems). Test problems are not evaluated here.", "",
             "| arm | entry | lr | loss (weight) | NLL on right samples | validation correct by round |",
             "|---|---|---|---|---|---|"]
    for name, row in result["select"].items():
        p = row["protocol"]
        weights = p.get("loss_weights") or [1.0] * len(p["loss"])
        loss = " + ".join(f"{lo}" + (f" ({w:g})" if w != 1 else "") for lo, w in zip(p["loss"], weights))
        if p["kind"] == "rft":  # RFT is the NLL on the right samples itself
            loss, replay = "-", "1"
        else:
            replay = f"{p['replay']:g}" if p["kind"] != "rft_steps" and p.get("replay") else "-"
        lines.append(f"| {LABELS[row['arm']]} | {name.split('#')[1]} | {p['lr']:g} | {loss} | {replay} | "
                     f"{' -> '.join(str(v) for v in row['val'])} |")
    return "\n".join(lines)


def rerender(path: str) -> None:
    """Recompute the summary and table of a result file from its per-seed numbers (no training)."""
    res = json.loads(Path(path).read_text())
    size = sizes(res["mode"], res.get("task", "default"))
    if "sampling" in res:
        size.sampling = Sampling(**res["sampling"])
    res["summary"] = summarize(res["per_seed"])
    res["markdown"] = render(res["summary"], res["per_seed"], size)
    Path(path).write_text(json.dumps(res, indent=2) + "\n")


def merge_arms(old: dict[str, Any], new: dict[str, Any], size: HelpsSize) -> dict[str, Any]:
    """``new`` (a run of some arms) laid over ``old`` (an earlier result of the same seeds): per seed, the arms
    of ``new`` replace those of ``old`` and the others are kept; the PRM entries come from ``new`` when it
    trained one. Summary and table are rebuilt."""
    by_seed = {r["seed"]: r for r in old.get("per_seed", [])}
    merged = []
    for r in new["per_seed"]:
        o = by_seed.get(r["seed"], {})
        row = {**o, **r, "arms": {**o.get("arms", {}), **r["arms"]},
               "timings_s": {**o.get("timings_s", {}), **r.get("timings_s", {})}}
        for key in ("prm", "prm_threshold", "prm_report"):
            row[key] = r.get(key) if r.get(key) is not None else o.get(key)
        merged.append(row)
    summary = summarize(merged)
    return {**new, "per_seed": merged, "summary": summary, "markdown": render(summary, merged, size)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.helps", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("smoke", "quick", "full", "select"), default="quick")
    p.add_argument("--task", choices=("default", "habit"), default="default",
                   help="'habit': the variant whose SFT demonstrations forget half of the carries")
    p.add_argument("--entries", default=None,
                   help="select mode: only these grid entries (comma-separated, e.g. 'stepwise/checker#2'); their "
                        "results are merged into the existing result file")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--arms", default=None,
                   help="only these arms besides 'sft' (comma-separated, e.g. 'rft/checker,stepwise/checker')")
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

    from bench import common

    torch.set_num_threads(1)
    device = torch.device("cpu")
    machine, t0 = common.machine_info(device), time.perf_counter()
    entries = [e.strip() for e in args.entries.split(",")] if args.entries else None
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
    if arms and set(arms) - set(ARMS):
        p.error(f"unknown --arms {sorted(set(arms) - set(ARMS))}; choose from {', '.join(ARMS[1:])}")
    res = run(args.mode, device, work_dir=args.work_dir, seeds=args.seeds, task=args.task, entries=entries,
              arms=arms)
    name = "helps-" + ("select" if args.mode == "select" else args.mode) + ("" if args.task == "default" else
                                                                          f"-{args.task}")
    if args.mode == "select" and entries:  # keep the entries run earlier
        old = Path(args.out) if args.out else common.RESULTS_DIR / f"{name}.json"
        if old.exists():
            merged = {**json.loads(old.read_text())["select"]["select"], **res["select"]["select"]}
            res["select"]["select"] = {k: merged[k] for k in sorted(merged, key=_entry_order)}
            res["markdown"] = render_select(res["select"])
    if args.mode != "select" and arms:  # keep the other arms of an earlier run of the same seeds
        old = Path(args.out) if args.out else common.RESULTS_DIR / f"{name}.json"
        if old.exists():
            res = merge_arms(json.loads(old.read_text()), res, sizes(args.mode, args.task))
    print(res["markdown"])
    payload = {"name": name, "benchmark": "helps", "mode": args.mode,
               "command": "python -m bench.helps " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": machine, "wall_s": round(time.perf_counter() - t0, 1), "load_avg_end": common.load_avg(),
               **res}
    path = Path(args.out) if args.out else common.RESULTS_DIR / f"{name}.json"
    common.write_result(path.stem, payload, path.parent)
    print(f"wrote {path}; python -m bench.run --markdown-only refreshes BENCHMARKS.md")
    if res.get("failed"):
        print(f"FAILED entries (see the log): {res['failed']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
