"""The embedded end-to-end demo (``stepdpo demo``): arithmetic task, tiny offline models, CPU.

From nothing, in one run:

1. **Task** - deterministic problems from :mod:`stepdpo.tasks.arith`; held-out test problems
   never appear in any training set.
2. **Policy** - a tiny GPT-2 (shipped byte-level tokenizer) fine-tuned on gold step-by-step
   solutions with TRL's ``SFTTrainer`` (:func:`stepdpo.sft.train_sft`).
3. **Accuracy before** - greedy solutions of the held-out problems, checked by the task's
   safe checker.
4. **PRM** - by default a *verifier LM*: a copy of the policy trained further with next-token loss
   on gold solutions of its own problems, scoring each step by the probability it gives the step's
   tokens (:class:`reward_models.likelihood.LikelihoodRewardModel`: the least probable token,
   running minimum over steps). ``prm_kind`` picks the others: ``head`` (a 2-class head trained by
   :class:`reward_models.training.PRMTrainer` on checker-labeled policy samples),
   ``implicit`` (:class:`reward_models.implicit_trainer.ImplicitPRMTrainer`) or ``verification``
   (a Yes/No generative verifier trained with next-token loss). Evaluated on held-out policy
   samples: ProcessBench-style first-error F1, step AUROC, ECE, beside two baselines: the step
   position alone and the SFT policy's own token probabilities (no training).
5. **Stepwise DPO, the default recipe** - :class:`stepdpo.trainer.StepwiseDPOTrainer` from the
   training prompts, for ``rounds`` rounds: each round the *current* policy solves every problem
   greedily, the judge (the task's checker by default, or the PRM) finds the first wrong step of
   each wrong solution, ``continuations`` rollouts at temperature 0.8 from the correct prefix give
   the chosen step (one whose rollout reaches the right answer, else any step the judge accepts),
   and the policy trains on those pairs with the DPOP loss (the chosen step may not fall below the
   reference, which is the policy as the round starts). The checker measures how often the pairs
   are right.
7. **Accuracy after** - same held-out problems, same greedy decoding; plus best-of-N with the
   PRM and PRM-weighted voting vs majority vote over the same samples, at the sampling temperature
   that works best on validation problems, under each step-score aggregation.
8. **Report** - ``metrics.json``, ``report.md`` and PNG plots in the output directory.

Why one ~750-line module: it is the demo script - stages, plots and the report read top to
bottom in the order they run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROBE_KEYS = ("probe/logps_chosen", "probe/logps_rejected", "probe/prefers_chosen")


@dataclass
class DemoConfig:
    """Sizes and hyper-parameters of the demo (defaults fit 10 minutes on a 2-core CPU)."""

    seed: int = 0
    task: dict = field(default_factory=dict)  # ArithConfig fields; {} = the default difficulty
    n_test: int = 1000
    n_sft: int = 4000
    n_prm_prompts: int = 600  # problems whose policy samples train the label-trained PRM kinds
    n_prm_gold: int = 4000  # problems whose gold solutions train the verifier LM (drawn last: other sets unchanged)
    n_pair_prompts: int = 700
    n_val: int = 200
    # who scores steps when building pairs: "checker" (the task's verifier, as a rules reward model) or "prm"
    # (the trained PRM). Measured (3 seeds): PRM-built pairs are right only 37-45% of the time on this task, and
    # Stepwise DPO on them lowers accuracy; checker-built pairs are all right. See report.md / BENCHMARKS.md.
    judge: str = "checker"
    policy_path: str | None = None  # start from a saved SFT policy instead of training one
    # the task's "habit" variant: SFT demonstrations written with a systematic slip ("carry" or "borrow", see
    # stepdpo.tasks.arith.habit_steps) at this rate; test, validation and training answers stay exact
    sft_habit: str | None = None
    sft_habit_rate: float = 0.0
    policy_layers: int = 4
    policy_width: int = 128
    policy_heads: int = 4
    sft_steps: int = 500  # measured: 56% held-out accuracy after 500 steps (seed 0), 78-97% after 700 (3 seeds)
    sft_lr: float = 1e-3
    sft_batch: int = 64
    # the PRM recipe (chosen on validation problems, issue 13; BENCHMARKS.md "A PRM that checks steps"):
    # "likelihood" = a verifier LM (prm_backbone, trained prm_steps more with next-token loss on the gold
    # solutions of n_prm_gold problems) scoring steps by token probability; "head" / "implicit" / "verification"
    # train on checker-labeled policy samples of the n_prm_prompts problems (+ their gold, injected errors)
    prm_kind: str = "likelihood"
    prm_backbone: str = "policy"  # "policy": start from the SFT policy; "fresh": a new model of the policy's size
    prm_samples_per_prompt: int = 2
    prm_injected: int = 600
    prm_steps: int = 100  # the demo's size (10 minutes); bench helps trains 400 at lr 1e-3
    prm_lr: float = 3e-4  # validation, seed 0 (bench.prm_probe): 100 steps at 3e-4 F1 0.896, at 1e-3 0.757
    prm_batch: int = 64
    prm_eval_temperature: float = 0.7  # held-out policy samples the PRM is evaluated on (val: 2 per problem)
    k: int = 4
    temperature: float = 1.0  # sampling temperature of the label-trained PRMs' training solutions
    # Stepwise DPO, the default recipe (bench helps: chosen on validation problems; see BENCHMARKS.md)
    rounds: int = 3
    steps_per_round: int = 70
    continuations: int = 8  # rollouts from each error's correct prefix
    rollout_temperature: float = 0.8
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    dpo_loss: list[str] = field(default_factory=lambda: ["dpop"])
    dpo_loss_weights: list[float] | None = None  # None: the trainer's default (0.01 next to the NLL replay)
    dpop_lambda: float = 50.0
    replay_weight: float = 1.0  # NLL on the right solutions among each round's samples
    dpo_epochs: float = 1.0  # run_stepwise_dpo (a fixed set of pairs) only
    dpo_batch: int = 32
    dpo_scheduler: str = "cosine"
    dpo_warmup: float = 0.1  # warm-up steps (a float below 1: that share of the steps)
    best_of_n: int = 8
    n_best_of_n: int = 200
    best_of_n_temperatures: tuple = (0.4, 0.7, 1.0)  # chosen among on n_best_of_n_val validation problems
    n_best_of_n_val: int = 48
    threads: int = 1

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        """A smoke-sized run (well under 2 minutes)."""
        easy = {"min_steps": 1, "max_steps": 2, "start_min": 2, "start_max": 19, "min_operand": 1, "max_operand": 9}
        return cls(seed=seed, task=easy, n_test=100, n_sft=1000, n_prm_prompts=80, n_prm_gold=600, n_pair_prompts=200,
                   n_val=100, policy_layers=2, policy_width=64, policy_heads=2, sft_steps=800, sft_batch=32, sft_lr=3e-3,
                   prm_injected=100, prm_steps=100, prm_batch=32, rounds=2, steps_per_round=40,
                   continuations=4, dpo_batch=16, n_best_of_n=40, n_best_of_n_val=24,
                   best_of_n_temperatures=(0.7, 1.0))

    def arith(self):
        from stepdpo.tasks.arith import ArithConfig

        return ArithConfig(**self.task)


# -- stages (reused by the benchmarks) -------------------------------------------------------------
def make_data(cfg: DemoConfig, task=None) -> dict[str, Any]:
    """Disjoint problem sets: test, SFT (gold), PRM prompts, PRM gold/injected-error solutions, pair prompts,
    validation, and the verifier LM's gold problems (drawn last, so its size leaves the other sets unchanged)."""
    from stepdpo.tasks.arith import make_samples

    task = task or cfg.arith()
    test = make_samples(cfg.n_test, seed=10_000 + cfg.seed, cfg=task)
    used = {s.meta["expression"] for s in test}
    sft = make_samples(cfg.n_sft, seed=cfg.seed, cfg=task, exclude=used, habit=cfg.sft_habit,
                       habit_rate=cfg.sft_habit_rate)
    used |= {s.meta["expression"] for s in sft}
    prm_prompts = make_samples(cfg.n_prm_prompts, seed=20_000 + cfg.seed, cfg=task, exclude=used)
    used |= {s.meta["expression"] for s in prm_prompts}
    injected = make_samples(cfg.prm_injected, seed=30_000 + cfg.seed, cfg=task, error_rate=0.5, exclude=used)
    used |= {s.meta["expression"] for s in injected}
    pairs = make_samples(cfg.n_pair_prompts, seed=40_000 + cfg.seed, cfg=task, exclude=used)
    used |= {s.meta["expression"] for s in pairs}
    val = make_samples(cfg.n_val, seed=50_000 + cfg.seed, cfg=task, exclude=used)
    used |= {s.meta["expression"] for s in val}
    prm_gold = make_samples(cfg.n_prm_gold, seed=60_000 + cfg.seed, cfg=task, exclude=used)
    return {"task": task, "test": test, "sft": sft, "prm_prompts": prm_prompts, "injected": injected,
            "pair_prompts": pairs, "val": val, "prm_gold": prm_gold}


def train_policy(cfg: DemoConfig, tokenizer, sft_samples, output_dir: Path):
    """A tiny GPT-2 fine-tuned on gold solutions (TRL SFTTrainer); returns (model, log_history)."""
    from reward_models.testing import tiny_causal_lm
    from stepdpo.sft import train_sft
    from stepdpo.tasks.arith import STEP_FORMAT

    model = tiny_causal_lm(tokenizer, seed=cfg.seed, n_layer=cfg.policy_layers, n_embd=cfg.policy_width,
                           n_head=cfg.policy_heads, n_positions=128)
    trainer = train_sft(model, tokenizer, sft_samples, output_dir=str(output_dir / "sft_run"),
                        step_format=STEP_FORMAT, max_steps=cfg.sft_steps, learning_rate=cfg.sft_lr,
                        batch_size=cfg.sft_batch, seed=cfg.seed)
    model.save_pretrained(output_dir / "policy_sft", safe_serialization=True)
    tokenizer.save_pretrained(output_dir / "policy_sft")
    return model, trainer.state.log_history


def solve(model, tokenizer, prompts, *, k: int = 1, temperature: float = 0.0, seed: int = 0, max_steps: int = 8):
    """``k`` solutions per prompt (greedy when temperature is 0), as step lists."""
    from stepdpo.sampling import StepSampler
    from stepdpo.tasks.arith import STEP_FORMAT

    sampler = StepSampler(model, tokenizer, STEP_FORMAT, max_new_tokens=24, temperature=temperature, seed=seed,
                          batch_size=256)
    return sampler.sample_solutions(list(prompts), k=k, max_steps=max_steps)


def policy_results(model, tokenizer, samples) -> tuple[list[bool], list[list[str]]]:
    """Per problem, whether the greedy solution is right (by the checker), and the solutions:
    kept per problem so that two policies can be compared pairwise without solving again."""
    from stepdpo.tasks.arith import is_correct

    sols = [row[0] for row in solve(model, tokenizer, [s.prompt for s in samples])]
    return [is_correct(s.meta["expression"], sol) for s, sol in zip(samples, sols)], sols


def policy_accuracy(model, tokenizer, samples) -> tuple[int, int, list[list[str]]]:
    """Greedy accuracy on ``samples`` by the checker: (correct, total, solutions)."""
    right, sols = policy_results(model, tokenizer, samples)
    return sum(right), len(samples), sols


def sampled_results(model, tokenizer, samples, *, k: int = 8, temperature: float = 0.8,
                    seed: int = 0) -> dict[str, Any]:
    """``k`` sampled solutions per problem at ``temperature``: per problem the number right and
    whether the majority answer is right; ``pass@1`` (mean over samples) and ``maj@k``."""
    from stepdpo.decode import vote_answers
    from stepdpo.tasks.arith import extract_answer, is_correct

    sols = solve(model, tokenizer, [s.prompt for s in samples], k=k, temperature=temperature, seed=seed)
    n_right = [sum(is_correct(s.meta["expression"], sol) for sol in row) for s, row in zip(samples, sols)]
    votes = vote_answers(sols, extract_answer)
    maj = [v is not None and v == int(s.answer) for v, s in zip(votes, samples)]
    n = max(len(samples), 1)
    return {"k": k, "temperature": temperature, "n_right": n_right, "majority_right": maj,
            "pass_at_1": sum(n_right) / (k * n), f"maj_at_{k}": sum(maj) / n}


def checker_labeled(samples, solutions_per_prompt) -> list:
    """Policy solutions labeled by the checker (step i good iff steps 0..i are valid)."""
    from reward_models.types import StepSample
    from stepdpo.tasks.arith import check_solution

    out = []
    for s, sols in zip(samples, solutions_per_prompt):
        for sol in sols:
            if not sol:
                continue
            res = check_solution(s.meta["expression"], sol)
            out.append(StepSample(prompt=s.prompt, steps=sol, labels=res.labels, answer=s.answer,
                                  meta={"expression": s.meta["expression"], "first_error": res.first_error}))
    return out


def prm_data(cfg: DemoConfig, policy, tokenizer, data) -> tuple[list, list, list]:
    """PRM data: (train, validation, test), each drawn on its own problems with its own seed.

    Train: for the verifier LM (``likelihood``), the gold solutions of the ``prm_gold`` problems; for the
    label-trained kinds, the policy's own samples on the ``prm_prompts`` at ``temperature``
    (error-rich) labeled by the checker, their gold solutions and gold solutions with injected errors.
    Validation (2 samples per problem) and test (1 per problem): the policy's samples at
    ``prm_eval_temperature`` on the validation / test problems, labeled by the checker, so that
    both erroneous and fully correct solutions are plentiful."""
    if cfg.prm_kind == "likelihood":
        train = list(data["prm_gold"])
    else:
        label_prompts = list(data["prm_prompts"])
        sols = solve(policy, tokenizer, [s.prompt for s in label_prompts], k=cfg.prm_samples_per_prompt,
                     temperature=cfg.temperature, seed=cfg.seed + 1)
        train = checker_labeled(label_prompts, sols) + label_prompts + list(data["injected"])
    val_sols = solve(policy, tokenizer, [s.prompt for s in data["val"]], k=2, temperature=cfg.prm_eval_temperature,
                     seed=cfg.seed + 5)
    test_sols = solve(policy, tokenizer, [s.prompt for s in data["test"]], k=1,
                      temperature=cfg.prm_eval_temperature, seed=cfg.seed + 2)
    return train, checker_labeled(data["val"], val_sols), checker_labeled(data["test"], test_sols)


PRM_KINDS = ("likelihood", "head", "implicit", "verification")


def train_prm(cfg: DemoConfig, tokenizer, policy_dir: Path, train_samples, output_dir: Path):
    """Train the PRM of kind ``cfg.prm_kind`` on ``cfg.prm_backbone`` (the SFT policy in ``policy_dir``,
    or a fresh model of the policy's size); save it to ``output_dir/prm``; returns (path, log history)."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from reward_models.hf_utils import safe_from_pretrained
    from reward_models.testing import tiny_causal_lm, tiny_token_classifier
    from stepdpo.tasks.arith import STEP_FORMAT

    if cfg.prm_kind not in PRM_KINDS:
        raise ValueError(f"prm_kind must be one of {PRM_KINDS}, got {cfg.prm_kind!r}")
    if cfg.prm_backbone not in ("policy", "fresh"):
        raise ValueError(f"prm_backbone must be 'policy' or 'fresh', got {cfg.prm_backbone!r}")
    size = dict(seed=cfg.seed + 11, n_layer=cfg.policy_layers, n_embd=cfg.policy_width, n_head=cfg.policy_heads,
                n_positions=128)
    head = cfg.prm_kind == "head"
    if cfg.prm_backbone == "fresh":
        model = tiny_token_classifier(tokenizer, num_labels=2, **size) if head else tiny_causal_lm(tokenizer, **size)
    elif head:
        model = safe_from_pretrained(AutoModelForTokenClassification, policy_dir, num_labels=2)
    else:
        model = safe_from_pretrained(AutoModelForCausalLM, policy_dir)
    run_dir, prm_dir = output_dir / "prm_run", output_dir / "prm"
    common = dict(output_dir=str(run_dir), max_steps=cfg.prm_steps, learning_rate=cfg.prm_lr,
                  per_device_train_batch_size=cfg.prm_batch, logging_steps=10, save_strategy="no", report_to=[],
                  seed=cfg.seed, use_cpu=not _cuda(), disable_tqdm=True, lr_scheduler_type="cosine",
                  warmup_steps=10, step_separator="\n")
    if cfg.prm_kind == "likelihood":
        from reward_models.likelihood import LikelihoodRewardModel
        from stepdpo.sft import train_sft

        gold = [s for s in train_samples if s.first_error is None]
        trainer = train_sft(model, tokenizer, gold, output_dir=str(run_dir), step_format=STEP_FORMAT,
                            max_steps=cfg.prm_steps, learning_rate=cfg.prm_lr, batch_size=cfg.prm_batch, seed=cfg.seed)
        LikelihoodRewardModel.from_model(trainer.model.eval(), tokenizer, step_format=STEP_FORMAT).save(prm_dir)
        return prm_dir, trainer.state.log_history
    if cfg.prm_kind == "implicit":
        from reward_models.implicit_trainer import ImplicitPRMConfig, ImplicitPRMTrainer

        trainer = ImplicitPRMTrainer(model=model, args=ImplicitPRMConfig(beta=0.5, **common),
                                     train_dataset=train_samples, processing_class=tokenizer)
    else:
        from reward_models.training import PRMConfig, PRMTrainer

        extra = dict(backend="head", num_labels=2) if head else dict(backend="verification", lm_loss_weight=1.0)
        trainer = PRMTrainer(model=model, args=PRMConfig(**extra, **common), train_dataset=train_samples,
                             processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(prm_dir))
    return prm_dir, trainer.state.log_history


def prm_baselines(policy, tokenizer, val, test) -> dict[str, Any]:
    """What a PRM must beat, on the same held-out samples with thresholds tuned on the same validation
    samples: the step's position alone (score = minus its index) and the SFT policy's own token
    probabilities (:class:`~reward_models.likelihood.LikelihoodRewardModel`, no training)."""
    from reward_models.likelihood import LikelihoodRewardModel
    from reward_models.rules import FunctionRewardModel
    from stepdpo.tasks.arith import STEP_FORMAT

    scorers = {"position": FunctionRewardModel(lambda p, steps: [-float(j) for j in range(len(steps))],
                                               name="position"),
               "policy_likelihood": LikelihoodRewardModel.from_model(policy, tokenizer, step_format=STEP_FORMAT)}
    return {name: evaluate_tuned(rm, val, test)[0].to_dict() for name, rm in scorers.items()}


def evaluate_tuned(rm, val, test):
    """``(evaluation on test, threshold)``: the first-error threshold tuned on ``val`` (never on test)."""
    from reward_models.evaluation import evaluate_prm, tune_first_error_threshold

    val_scores = rm.score_steps([s.prompt for s in val], [s.steps for s in val])
    threshold, _ = tune_first_error_threshold(val_scores, [s.first_error for s in val])
    return evaluate_prm(rm, test, threshold=threshold, progress=False), threshold


def pair_quality(pairs, task) -> dict[str, float]:
    """By the checker: share of pairs whose chosen step is valid and whose rejected step is not."""
    from stepdpo.tasks.arith import check_solution

    ok_c = ok_r = both = 0
    for p in pairs:
        expr = task.expression_of(p.prompt)
        c = check_solution(expr, p.prefix_steps + [p.chosen]).step_ok[-1]
        r = check_solution(expr, p.prefix_steps + [p.rejected]).step_ok[-1]
        ok_c += c
        ok_r += not r
        both += c and not r
    n = max(len(pairs), 1)
    return {"chosen_valid": ok_c / n, "rejected_invalid": ok_r / n, "both": both / n}


def run_stepwise_dpo(cfg: DemoConfig, model, tokenizer, pairs, output_dir: Path, max_steps: int = -1):
    """Stepwise DPO on the pairs (step pairs, or outcome pairs for the outcome-level baseline);
    returns the trainer (its model is trained in place). ``max_steps`` > 0 overrides the epochs."""
    from stepdpo.config import StepwiseDPOConfig
    from stepdpo.trainer import StepwiseDPOTrainer

    args = StepwiseDPOConfig(
        output_dir=str(output_dir / "dpo_run"), learning_rate=cfg.dpo_lr, beta=cfg.dpo_beta,
        loss_type=list(cfg.dpo_loss), loss_weights=list(cfg.dpo_loss_weights) if cfg.dpo_loss_weights else None,
        num_train_epochs=cfg.dpo_epochs,
        max_steps=max_steps,
        per_device_train_batch_size=cfg.dpo_batch, logging_steps=5, save_strategy="no", report_to=[],
        seed=cfg.seed, use_cpu=not _cuda(), disable_tqdm=True, gradient_checkpointing=False,
        lr_scheduler_type=cfg.dpo_scheduler, warmup_steps=cfg.dpo_warmup, step_separator="\n",
    )
    trainer = StepwiseDPOTrainer(model=model, args=args, tokenizer=tokenizer, train_dataset=pairs)
    trainer.train()
    return trainer


def stepwise_dpo_rounds(policy, tokenizer, prompts, answers, judge, *, output_dir, rounds: int, steps: int,
                        lr: float, loss: list[str], beta: float = 0.1, dpop_lambda: float = 50.0,
                        loss_weights: list[float] | None = None, replay_weight: float = 1.0, batch: int = 32,
                        threshold: float = 0.5,
                        continuations: int = 8, rollout_temperature: float = 0.8, max_new_tokens: int = 24,
                        max_steps: int = 8, seed: int = 0, warmup: float = 0.1, scheduler: str = "cosine",
                        save_pairs_to: str | None = None, on_round=None):
    """The default Stepwise DPO recipe on the arithmetic task: :class:`StepwiseDPOTrainer` from
    ``prompts`` with ``rounds`` rounds of ``steps`` optimizer steps, the greedy policy's first errors
    (located by ``judge``), ``continuations`` rollouts at ``rollout_temperature`` for the chosen
    steps, verified by the answer. ``on_round(model, round_index, pair_stats, log_history)`` runs
    after each round (e.g. to evaluate). Returns the trainer; its policy is trained in place."""
    from transformers import TrainerCallback

    from stepdpo.config import StepwiseDPOConfig
    from stepdpo.tasks.arith import is_correct
    from stepdpo.trainer import StepwiseDPOTrainer

    args = StepwiseDPOConfig(
        output_dir=str(output_dir), learning_rate=lr, beta=beta, loss_type=list(loss),
        loss_weights=list(loss_weights) if loss_weights else None, replay_weight=replay_weight,
        dpop_lambda=dpop_lambda, rounds=rounds,
        regenerate_every_steps=steps, max_steps=steps, per_device_train_batch_size=batch,
        logging_steps=1, save_strategy="no", report_to=[], seed=seed, use_cpu=not _cuda(),
        disable_tqdm=True, gradient_checkpointing=False, lr_scheduler_type=scheduler, warmup_steps=warmup,
        step_separator="\n", sample_temperature=0.0, rollout_temperature=rollout_temperature,
        num_continuations=continuations, sample_max_new_tokens=max_new_tokens, max_solution_steps=max_steps,
        sample_batch_size=256, score_threshold=threshold, probe_pairs=64, probe_steps=max(1, steps // 10),
        save_pairs_to=save_pairs_to)
    holder: dict[str, Any] = {}

    class RoundEnd(TrainerCallback):
        def on_train_end(self, targs, state, control, **kw):
            tr = holder["trainer"]
            if on_round is not None:
                model = tr.accelerator.unwrap_model(tr.model)
                on_round(model, tr.pair_stats[-1]["round"], tr.pair_stats[-1], list(state.log_history))
                model.train()

    trainer = StepwiseDPOTrainer(model=policy, args=args, tokenizer=tokenizer, prompts=list(prompts),
                                 reward_model=judge, answers=list(answers),
                                 answer_checker=lambda p, steps, a: is_correct(a, steps), callbacks=[RoundEnd()])
    holder["trainer"] = trainer
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # every step is logged (for the plots): the rounds' summaries are printed
    trainer.train()
    return trainer


def best_of_n_vs_vote(model, tokenizer, samples, prm, n: int, seed: int, temperature: float = 1.0) -> dict[str, Any]:
    """On ``samples``, ``n`` solutions each at ``temperature``: best-of-n by the PRM and PRM-weighted
    voting under each aggregation (:func:`reward_models.evaluation.rerank_report`; unfinished solutions
    are never picked over finished ones), majority vote and pass@n over the same solutions."""
    from reward_models.evaluation import rerank_report
    from stepdpo.tasks.arith import extract_answer, is_correct

    prompts = [s.prompt for s in samples]
    sols = solve(model, tokenizer, prompts, k=n, temperature=temperature, seed=seed)
    flat = [(i, sol) for i, row in enumerate(sols) for sol in row if sol]
    scores = prm.score_steps([prompts[i] for i, _ in flat], [sol for _, sol in flat])
    by_sol = {id(sol): sc for (_, sol), sc in zip(flat, scores)}
    rep = rerank_report([[by_sol.get(id(sol), []) for sol in row] for row in sols],
                        [[is_correct(s.meta["expression"], sol) for sol in row] for s, row in zip(samples, sols)],
                        [[extract_answer(sol) for sol in row] for row in sols], [s.answer for s in samples])
    return {**rep, "temperature": temperature, "best_of_n_prm": rep["best_of_n"]["min"],
            "prm_weighted_vote": rep["weighted_vote"]["min"]}


def best_of_n_at_chosen_temperature(cfg: DemoConfig, model, tokenizer, data, prm) -> dict[str, Any]:
    """Pick the sampling temperature of best-of-n on validation problems (best-of-n by the PRM, min
    aggregation), then report on the test problems at it; ``validation`` keeps every candidate's result."""
    val = data["val"][: cfg.n_best_of_n_val]
    tried = {t: best_of_n_vs_vote(model, tokenizer, val, prm, cfg.best_of_n, cfg.seed + 6, t)
             for t in cfg.best_of_n_temperatures}
    best_t = max(tried, key=lambda t: (tried[t]["best_of_n_prm"], -t))
    out = best_of_n_vs_vote(model, tokenizer, data["test"][: cfg.n_best_of_n], prm, cfg.best_of_n, cfg.seed + 4,
                            best_t)
    out["validation"] = {str(t): {"best_of_n_prm": r["best_of_n_prm"], "majority_vote": r["majority_vote"],
                                  "pass_at_n": r["pass_at_n"], "problems": r["problems"]} for t, r in tried.items()}
    return out


# -- the whole run -----------------------------------------------------------------------------------
class _Stage:
    """Times one stage of the demo into ``timings[name]`` and prints its start."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t = time.time()
        print(f"[demo] {self.name} ...", flush=True)

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.time() - self.t, 1)


def _stepwise_dpo_stage(cfg: DemoConfig, policy, tok, data, prm, threshold: float, out: Path):
    """Rounds of Stepwise DPO from the SFT policy (judged by the PRM or the checker, ``cfg.judge``),
    validation accuracy after each; saves ``policy_stepdpo`` with its tokenizer.

    Returns (policy, rounds, log history, checker quality of the last pairs, pair stats, loss)."""
    from stepdpo.tasks.arith import checker_reward_model

    if cfg.judge == "prm":
        judge, judge_threshold = prm, threshold
    elif cfg.judge == "checker":
        judge, judge_threshold = checker_reward_model(data["task"]), 0.5
    else:
        raise ValueError(f"judge must be 'prm' or 'checker', got {cfg.judge!r}")
    rounds: list[dict[str, Any]] = []
    dpo_log: list[dict] = []

    def on_round(model, r, stats, log_history):
        cv, nv, _ = policy_accuracy(model, tok, data["val"])
        offset = r * cfg.steps_per_round
        dpo_log.extend({**h, "step": h.get("step", 0) + offset} for h in log_history)
        moved = [h for h in log_history if "probe/logps_chosen" in h]
        rounds.append({"round": r, "pairs": stats["pairs"], "chosen_verified": stats.get("chosen_verified", 0),
                       "greedy_right_train": stats.get("correct_solutions", 0), "val_correct": cv, "n_val": nv,
                       "probe_first": {k: moved[0][k] for k in PROBE_KEYS} if moved else None,
                       "probe_last": {k: moved[-1][k] for k in PROBE_KEYS} if moved else None})
        print(f"[demo] round {r}: {stats['pairs']} pairs ({stats.get('chosen_verified', 0)} chosen steps "
              f"verified by a rollout); validation accuracy {cv}/{nv}", flush=True)

    from stepdpo.trainer import NoPairsError

    try:
        dpo = stepwise_dpo_rounds(
            policy, tok, [s.prompt for s in data["pair_prompts"]],
            [s.meta["expression"] for s in data["pair_prompts"]], judge, output_dir=out / "dpo_run",
            rounds=cfg.rounds, steps=cfg.steps_per_round, lr=cfg.dpo_lr, loss=cfg.dpo_loss,
            loss_weights=cfg.dpo_loss_weights, replay_weight=cfg.replay_weight, beta=cfg.dpo_beta,
            dpop_lambda=cfg.dpop_lambda, batch=cfg.dpo_batch,
            threshold=judge_threshold, continuations=cfg.continuations,
            rollout_temperature=cfg.rollout_temperature, seed=cfg.seed, warmup=cfg.dpo_warmup,
            scheduler=cfg.dpo_scheduler, save_pairs_to=str(out / "pairs.jsonl"), on_round=on_round)
        policy = dpo.accelerator.unwrap_model(dpo.model)
        quality, pair_stats = pair_quality(dpo.last_pairs, data["task"]), dpo.pair_stats
        loss = {"types": [n for n, _ in dpo.applied_losses], "weights": [w for _, w in dpo.applied_losses],
                "replayed_per_round": [st.get("replayed", 0) for st in pair_stats]}
    except NoPairsError as e:  # an honest no-op: nothing to train on (e.g. a policy that gets every step wrong)
        print(f"[demo] Stepwise DPO skipped: {e}")
        quality, pair_stats, loss = pair_quality([], data["task"]), [], None
    policy.eval()
    policy.save_pretrained(out / "policy_stepdpo", safe_serialization=True)
    tok.save_pretrained(out / "policy_stepdpo")
    return policy, rounds, dpo_log, quality, pair_stats, loss


def run_demo(output_dir: str = "outputs/demo", quick: bool = False, seed: int = 0,
             cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run every stage, print progress and results, write the report; returns the metrics."""
    import torch
    from transformers import set_seed

    from reward_models.base import load_reward_model
    from reward_models.evaluation import evaluate_prm
    from reward_models.testing import tiny_tokenizer
    from stepdpo import report

    cfg = cfg or (DemoConfig.quick(seed) if quick else DemoConfig(seed=seed))
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.time()
    stage = functools.partial(_Stage, timings)
    tok = tiny_tokenizer()
    with stage("data"):
        data = make_data(cfg)
    print(f"[demo] {len(data['sft'])} SFT problems, {len(data['test'])} held-out test problems; "
          f"e.g. {data['test'][0].prompt.strip()!r} -> {' | '.join(data['test'][0].steps)}")

    with stage("sft"):
        if cfg.policy_path:
            from transformers import AutoModelForCausalLM

            from reward_models.hf_utils import safe_from_pretrained

            policy, sft_log = safe_from_pretrained(AutoModelForCausalLM, cfg.policy_path), []
            policy.save_pretrained(out / "policy_sft", safe_serialization=True)
            tok.save_pretrained(out / "policy_sft")
        else:
            policy, sft_log = train_policy(cfg, tok, data["sft"], out)
    with stage("eval_before"):
        right0, sols0 = policy_results(policy, tok, data["test"])
        c0, n0 = sum(right0), len(right0)
    print(f"[demo] SFT policy: {c0}/{n0} = {c0 / n0:.1%} held-out accuracy (greedy)")

    with stage("prm_data"):
        prm_train, prm_val, prm_test = prm_data(cfg, policy, tok, data)
    n_bad = sum(s.first_error is not None for s in prm_train)
    print(f"[demo] PRM data: {len(prm_train)} training solutions ({n_bad} with an error); held-out policy samples "
          f"at T={cfg.prm_eval_temperature}: {len(prm_val)} validation, {len(prm_test)} test "
          f"({sum(s.first_error is None for s in prm_test)} fully correct)")
    with stage("prm"):
        prm_dir, prm_log = train_prm(cfg, tok, out / "policy_sft", prm_train, out)
        prm = load_reward_model(prm_dir)
        # the step threshold is tuned for first-error F1 on validation samples, never on test ones
        ev, threshold = evaluate_tuned(prm, prm_val, prm_test)
        ev_half = evaluate_prm(prm, prm_test, threshold=0.5, progress=False)
        baselines = prm_baselines(policy, tok, prm_val, prm_test)
    print(f"[demo] PRM ({cfg.prm_kind}) on {len(prm_test)} held-out policy solutions: ProcessBench-style F1 "
          f"{_f(ev.first_error.f1)} at the validation-tuned threshold {threshold:.3f} ({_f(ev_half.first_error.f1)} "
          f"at 0.5), step AUROC {_f(ev.steps.auroc)}, ECE {_f(ev.ece)}; baselines: step position AUROC "
          f"{_f(baselines['position']['steps']['auroc'])}, the SFT policy's own token probabilities AUROC "
          f"{_f(baselines['policy_likelihood']['steps']['auroc'])} / F1 "
          f"{_f(baselines['policy_likelihood']['first_error']['f1'])}")

    with stage("stepwise_dpo"):
        policy, rounds, dpo_log, quality, pair_stats, loss = _stepwise_dpo_stage(cfg, policy, tok, data, prm,
                                                                                threshold, out)
    print(f"[demo] Stepwise DPO: {len(rounds)} rounds, {sum(r['pairs'] for r in rounds)} step pairs in all "
          f"(judge: {cfg.judge}); by the checker {quality['both']:.1%} of the last round's pairs have a valid chosen "
          "and an invalid rejected step")
    with stage("eval_after"):
        right1, sols1 = policy_results(policy, tok, data["test"])
        c1, n1 = sum(right1), len(right1)
        change = report.paired_difference([int(x) for x in right1], [int(x) for x in right0])
    print(f"[demo] after Stepwise DPO: {c1}/{n1} = {c1 / n1:.1%} held-out accuracy (greedy), "
          f"was {c0 / n0:.1%}")
    with stage("best_of_n"):
        bon = best_of_n_at_chosen_temperature(cfg, policy, tok, data, prm)
    print(f"[demo] best-of-{cfg.best_of_n} at T={bon['temperature']} (chosen on validation): by PRM "
          f"{bon['best_of_n_prm']:.1%}, PRM-weighted vote {bon['prm_weighted_vote']:.1%}, majority vote "
          f"{bon['majority_vote']:.1%} (pass@{cfg.best_of_n} {bon['pass_at_n']:.1%}) on {bon['problems']} problems")

    # -- report ----------------------------------------------------------------------------------
    with stage("report"):
        metrics = {
            "config": asdict(cfg),
            "accuracy_before": c0 / n0, "accuracy_after": c1 / n1, "n_test": n0,
            "correct_before": c0, "correct_after": c1,
            "change": change, "rounds": rounds, "loss": loss,
            "prm": ev.to_dict(), "prm_threshold": threshold, "prm_at_0.5": ev_half.to_dict(),
            "prm_baselines": baselines,
            "pairs": {"count": sum(r["pairs"] for r in rounds), "per_round": pair_stats, "checker_last_round": quality},
            "best_of_n": bon, "timings_s": timings, "versions": report.library_versions(),
        }
        images = _plots(out, sft_log, prm_log, dpo_log, prm, prm_test, ev, (c0, n0), (c1, n1), bon)
        metrics["timings_s"]["total"] = round(time.time() - t_all, 1)
        report.write_metrics(out, metrics)
        path = report.write_report(out, "Stepwise DPO demo (arithmetic task, tiny GPT-2, CPU)",
                                   _report_sections(cfg, data, metrics, sols0, sols1), images)
    print(f"[demo] accuracy before {c0 / n0:.1%} -> after {c1 / n1:.1%} on {n0} held-out problems")
    print(f"[demo] report: {path.resolve()}  (metrics: {(out / 'metrics.json').resolve()})")
    print(f"[demo] total {time.time() - t_all:.0f} s")
    return metrics


def _plots(out, sft_log, prm_log, dpo_log, prm, prm_test, ev, before, after, bon):
    from reward_models.evaluation import reliability_diagram
    from stepdpo import report

    images = []
    dpo_loss = report.curves_from_log_history(dpo_log, ["loss"])
    last = max(dpo_loss["loss"][0]) if dpo_loss else None  # the rewards panel ends where the loss panel ends
    curves = {
        "SFT loss": report.curves_from_log_history(sft_log, ["loss"]),
        "PRM loss": report.curves_from_log_history(prm_log, ["loss"]),
        "Stepwise DPO loss": dpo_loss,
        "DPO rewards": report.curves_from_log_history(dpo_log, ["rewards/chosen", "rewards/rejected",
                                                                "rewards/margins"], max_step=last),
    }
    images.append(("Training curves", report.plot_training_curves(
        curves, out / "training_curves.png", same_steps=("Stepwise DPO loss", "DPO rewards"))))
    show = [s for s in prm_test if s.first_error is not None][:5] + [s for s in prm_test if s.first_error is None][:3]
    if show:
        scores = prm.score_steps([s.prompt for s in show], [s.steps for s in show])
        images.append(("PRM step scores on held-out policy solutions",
                       report.plot_step_scores([s.steps for s in show], scores, out / "step_scores.png",
                                               labels=[s.labels for s in show],
                                               title="PRM P(good step)", label_source="checker label")))
    acc = {"SFT": before, "Stepwise DPO": after,
           f"final policy\nbest-of-{bon['n']} PRM": (round(bon["best_of_n_prm"] * bon["problems"]), bon["problems"]),
           f"final policy\nmajority@{bon['n']}": (round(bon["majority_vote"] * bon["problems"]), bon["problems"])}
    images.append(("Accuracy", report.plot_accuracy(acc, out / "accuracy.png")))
    probs = [p for row in ev.step_scores for p in row]
    labels = [lab for s in prm_test for lab in s.labels]
    images.append(("PRM calibration", reliability_diagram(probs, labels, out / "calibration.png")))
    return images


def _loss_text(cfg: DemoConfig, loss: dict | None) -> str:
    """The rounds' training loss as the trainer applied it (``metrics["loss"]``)."""
    if not loss:
        return "no training (no pairs)"
    names = [n.upper() + f" (lambda {cfg.dpop_lambda:g})" if n == "dpop" else n for n in loss["types"]]
    text = " + ".join(f"{n} weighted {w:g}" for n, w in zip(names, loss["weights"]))
    if any(loss["replayed_per_round"]):
        text += (f", plus NLL (weight {cfg.replay_weight:g}) on the round's right solutions in every batch (per round "
                 f"{', '.join(str(n) for n in loss['replayed_per_round'])} of them)")
    return text


def _report_sections(cfg, data, m, sols0, sols1):
    from stepdpo import report

    ex = data["test"][0]
    prm = m["prm"]
    rows = [{"stage": k, "seconds": v} for k, v in m["timings_s"].items()]
    from stepdpo.tasks.arith import is_correct

    def verdict(s, sol):
        return "right" if is_correct(s.meta["expression"], sol) else "wrong"

    changed = [(s, a, b) for s, a, b in zip(data["test"], sols0, sols1) if verdict(s, a) != verdict(s, b)]
    shown = [c for c in changed if verdict(c[0], c[2]) == "right"][:3] + \
        [c for c in changed if verdict(c[0], c[2]) == "wrong"][:2]
    examples = "\n".join(f"- `{s.prompt.strip()}`: before `{' | '.join(a)}` ({verdict(s, a)}) -> after "
                         f"`{' | '.join(b)}` ({verdict(s, b)})" for s, a, b in shown) or "(no verdict changed)"
    c = m["change"]
    per_round = []
    for r in m["rounds"]:
        first, last = r.get("probe_first") or {}, r.get("probe_last") or {}
        per_round.append({
            "round": r["round"], "pairs": r["pairs"], "chosen step verified by a rollout": r["chosen_verified"],
            "training problems solved (greedy, as the round starts)": r["greedy_right_train"],
            "validation accuracy after the round": f"{r['val_correct']}/{r['n_val']}",
            "probe pairs: log-prob chosen / rejected, start -> end": (
                f"{first.get('probe/logps_chosen', float('nan')):.2f} / "
                f"{first.get('probe/logps_rejected', float('nan')):.2f} -> "
                f"{last.get('probe/logps_chosen', float('nan')):.2f} / "
                f"{last.get('probe/logps_rejected', float('nan')):.2f}") if first else "-"})
    return [
        ("Result", report.markdown_table([
            {"metric": "held-out accuracy before (SFT, greedy)", "value": f"{m['accuracy_before']:.1%} "
                                                                         f"({m['correct_before']}/{m['n_test']})"},
            {"metric": "held-out accuracy after Stepwise DPO", "value": f"{m['accuracy_after']:.1%} "
                                                                         f"({m['correct_after']}/{m['n_test']})"},
            {"metric": "change, paired on the same problems (95% band)",
             "value": f"{c['diff'] * 100:+.1f} ± {1.96 * c['se'] * 100:.1f} points ({c['gained']} problems gained, "
                      f"{c['lost']} lost)"},
            {"metric": f"PRM ({m['config']['prm_kind']}) ProcessBench-style F1 (held-out policy samples)",
             "value": _f(prm["first_error"]["f1"])},
            {"metric": "PRM step AUROC", "value": _f(prm["steps"]["auroc"])},
            {"metric": "baselines, step AUROC / F1: step position alone; the SFT policy's token probabilities",
             "value": " ; ".join(f"{_f(b['steps']['auroc'])} / {_f(b['first_error']['f1'])}"
                                 for b in (m["prm_baselines"]["position"], m["prm_baselines"]["policy_likelihood"]))},
            {"metric": "PRM ECE", "value": _f(prm["ece"])},
            {"metric": "step pairs built (all rounds)", "value": str(m["pairs"]["count"])},
            {"metric": "last round's pairs right by the checker (chosen valid, rejected invalid)",
             "value": f"{m['pairs']['checker_last_round']['both']:.1%}"},
            {"metric": f"best-of-{m['best_of_n']['n']} by PRM / PRM-weighted vote / majority vote / pass@n "
                       f"(final policy, T={m['best_of_n']['temperature']} chosen on validation)",
             "value": f"{m['best_of_n']['best_of_n_prm']:.1%} / {m['best_of_n']['prm_weighted_vote']:.1%} / "
                      f"{m['best_of_n']['majority_vote']:.1%} / {m['best_of_n']['pass_at_n']:.1%}"},
        ])),
        ("Reranking by aggregation", "Best-of-n and PRM-weighted vote when a solution's score is the min, product, "
         "mean or last of its step scores (unfinished solutions are never picked over finished ones):\n\n"
         + report.markdown_table([{"aggregation": a, "best-of-n": f"{m['best_of_n']['best_of_n'][a]:.1%}",
                                   "weighted vote": f"{m['best_of_n']['weighted_vote'][a]:.1%}"}
                                  for a in m["best_of_n"]["best_of_n"]])),
        ("Reading the result", _reading(m)),
        ("Task", f"Problems like `{ex.prompt.strip()}` with gold steps `{' | '.join(ex.steps)}`. "
                 f"{m['n_test']} held-out problems (never trained on); accuracy is measured by the safe checker "
                 "on greedy solutions."),
        ("Stepwise DPO rounds", "Each round, the current policy solves the "
         f"{cfg.n_pair_prompts} training problems greedily; the judge ("
         + ("the task's checker" if cfg.judge == "checker" else
            f"the trained PRM at its step threshold {m['prm_threshold']:.3f}, tuned for first-error F1 on "
            f"{cfg.n_val} validation problems") +
         f") finds the first wrong step of each wrong solution; {cfg.continuations} rollouts at temperature "
         f"{cfg.rollout_temperature} from the correct prefix give the chosen step; {cfg.steps_per_round} optimizer "
         f"steps of {_loss_text(cfg, m.get('loss'))} follow, with the policy at the start of the round as the "
         "reference. The probe pairs are 64 fixed pairs of each round, followed through its training.\n\n"
         + report.markdown_table(per_round)),
        ("Changed verdicts (examples: gained, then lost)", examples),
        ("Configuration", f"```json\n{json.dumps(asdict(cfg), indent=1)}\n```\n\nVersions: "
         + ", ".join(f"{k} {v}" for k, v in m["versions"].items())),
        ("Timings", report.markdown_table(rows)),
    ]


def _reading(m) -> str:
    """Plain-words verdict on before/after, paired on the same problems: the change and its 95% band."""
    c, n = m["change"], m["n_test"]
    half = 1.96 * c["se"]
    verdict = "an improvement" if c["diff"] > half else "a drop" if c["diff"] < -half else "no change beyond noise"
    return (f"Accuracy changed by {c['diff'] * 100:+.1f} points on {n} problems: {c['gained']} problems went from wrong "
            f"to right and {c['lost']} from right to wrong. The 95% noise band of a paired difference on these "
            f"problems is ±{half * 100:.1f} points (1.96 standard errors of the per-problem differences), so this is "
            f"{verdict}. BENCHMARKS.md ('Does Stepwise DPO help?') measures the same recipe on 3 seeds x 1,000 "
            "problems against RFT and outcome-level DPO on the same sampling budget.")


def _f(value) -> str:
    """A metric for printing: 3 decimals, or 'n/a' when undefined (NaN/None, e.g. no erroneous solutions)."""
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["DemoConfig", "PRM_KINDS", "best_of_n_at_chosen_temperature", "best_of_n_vs_vote", "checker_labeled",
           "evaluate_tuned", "prm_baselines", "make_data", "pair_quality", "policy_accuracy",
           "policy_results", "prm_data", "sampled_results",
           "run_demo", "run_stepwise_dpo", "solve", "train_policy", "train_prm"]
