"""Online pair building sharded over processes: 2 CPU processes vs 1, on the same prompts.

The parent (``python -m bench.run --only distributed``) fits a small arithmetic policy once,
saves it to a temporary folder (``save_pretrained(safe_serialization=True)``) and then starts
the worker of this module (``python -m bench.distributed --worker ...``) through the same
``accelerate launch --config_file configs/accelerate/multi_cpu.yaml --num_processes N`` (torchrun,
gloo on the CPU, ``OMP_NUM_THREADS=1``: one thread per process) with N = 1 and N = 2, in rotating
order (1, 2, then 2, 1, ...) for ``repeats`` rounds (full: 256 prompts, 5 rounds, after one
untimed warm-up launch of each; quick: 128 prompts, 3 rounds; smoke: 8 prompts, 1 round);
medians are reported.

Each worker builds a ``StepwiseDPOTrainer(prompts=..., answers=..., answer_checker=...,
reward_model=checker_reward_model(cfg))``: round 0's pairs are built in ``__init__`` by the
trainer's own sharded path (``_build_pair_dataset``: each process samples and judges its
contiguous slice of the prompts with the first-error strategy and verified rollouts, then the
pairs are gathered to every process). A subclass wraps exactly that method with a barrier
before and after; the time reported is the largest of the processes' times from the first
barrier to the end of the method (it includes the gathers and the hash check, not the final
barrier's wait), and the whole launch's wall time (interpreter start-up, imports, loading the
policy, the trainer's set-up, teardown) is recorded too. One untimed ``generate`` call warms
each process up first.

* **ours** - 2 processes, each with half of the prompts;
* **baseline** - 1 process with all of them (the same launcher, so the same launch overhead).

Target (issue): the pair-building time with 2 processes is at most 0.65x that with 1 process, on
2 cores, one thread per process. The whole launch's ratio is reported next to it (no target:
start-up does not shrink with more processes). Each process seeds its samplers alike and draws
for its own slice, so 2 processes draw other samples than 1 process (the same ones in every
repeat): the numbers of pairs and ``generate`` calls differ a little and are recorded.

Policy: the 2-layer, 64-wide GPT-2 of the tests (0.14M parameters, fitted in ~10 s on gold
solutions of easy problems: ``stepdpo.tasks.arith.fit_tiny_policy``, as in the tests). A trained
policy is needed: its solutions are well-formed and right part of the time, so first errors,
verified continuations and pairs are found as in real use (a random-weight GPT-2 from
:mod:`bench.models` finds none, and the trainer refuses to go on without pairs). Measured on
this 2-core machine: a ``generate`` call of <= 12 new tokens costs ~15-18 ms plus ~0.5 ms per
sequence, so a call of 64 sequences is ~1/3 fixed cost; a 4-layer, 256-wide policy (3.3M
parameters) costs ~46 ms plus ~1.75 ms per sequence (still ~30% fixed) and takes ~60 s to fit, so
a larger model would not remove the per-call overhead, only make every run longer. What does
matter is the number of prompts per process: one process takes 30.2 s of CPU for 256 prompts
(139 calls) and 16.1 s for 128 (73 calls), i.e. 0.53x for half the prompts, but 5.3 s for 48
against 8.4-8.8 s for 96 (33 against 57 calls, ~0.62x), because a shard's last call of each
round of sampling is part-filled and the fixed cost per call does not halve. Hence 256 prompts
in full mode (128 per process: 8 full calls per round of solution sampling).

On CPU the clock is wall time (CPU time cannot show parallelism); each process's CPU time is
recorded as well, and the load average before and after, since other processes on a shared
2-core machine take cores away from the 2-process run first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import comparison, load_avg, run_sizes

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "accelerate" / "multi_cpu.yaml"
PROMPT_SEED = 41
TARGET = 0.65


@dataclass
class DistSize:
    n_prompts: int
    repeats: int
    warmup: bool = True
    processes: tuple[int, ...] = (1, 2)
    num_candidates: int = 4
    max_new_tokens: int = 12
    max_solution_steps: int = 4
    batch_size: int = 64
    fit_steps: int = 250
    launch_timeout: int = 600


def sizes(mode: str) -> list[DistSize]:
    if mode == "smoke":
        return [DistSize(8, 1, warmup=False, launch_timeout=240)]
    if mode == "quick":
        return [DistSize(128, 3, warmup=False)]
    return [DistSize(256, 5)]


# -- the policy (parent) ----------------------------------------------------------------------------
def save_policy(path: Path, steps: int) -> dict[str, Any]:
    from stepdpo.tasks.arith import fit_tiny_policy

    t0 = time.perf_counter()
    model, tok, cfg = fit_tiny_policy(steps)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    (path / "arith.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    return {"params": sum(p.numel() for p in model.parameters()), "fit_steps": steps,
            "fit_s": round(time.perf_counter() - t0, 2)}


# -- launching (parent) -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, policy_dir: Path, out: Path, sz: DistSize, n_prompts: int) -> dict[str, Any]:
    """One ``accelerate launch`` of the worker; its result with the launch's wall time added."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_DISABLED": "true",
           "PYTHONPATH": os.pathsep.join(x for x in [str(ROOT), os.environ.get("PYTHONPATH", "")] if x)}
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes",
           str(num_processes), "--main_process_port", str(_free_port()), "--module", "bench.distributed",
           "--worker", "--policy", str(policy_dir), "--out", str(out), "--prompts", str(n_prompts),
           "--num-candidates", str(sz.num_candidates), "--max-new-tokens", str(sz.max_new_tokens),
           "--max-solution-steps", str(sz.max_solution_steps), "--batch-size", str(sz.batch_size),
           "--launched-at", repr(time.time())]
    t0 = time.perf_counter()
    # a session of its own: on a timeout the launcher and its workers are killed together, none is left waiting
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=sz.launch_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"accelerate launch with {num_processes} process(es) did not finish in "
                           f"{sz.launch_timeout} s") from None
    wall = time.perf_counter() - t0
    proc = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if proc.returncode != 0 or not out.is_file():
        errors = [line for line in proc.stderr.splitlines() if "Error" in line and line.startswith("[rank")]
        raise RuntimeError(f"accelerate launch with {num_processes} process(es) failed (exit {proc.returncode}):\n"
                           + "\n".join(errors[-5:] or [proc.stderr[-4000:]]))
    res = json.loads(out.read_text())
    if res["processes"] != num_processes:
        raise RuntimeError(f"asked for {num_processes} process(es), the worker ran with {res['processes']}")
    res["launch_s"] = wall
    return res


def run_size(sz: DistSize, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if device.type != "cpu":
        logger.warning("distributed: the workers run on the CPU (gloo), whatever the device (%s)", device)
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        tmp_path = Path(tmp)
        policy_dir = tmp_path / "policy"
        policy = save_policy(policy_dir, sz.fit_steps)
        logger.info("distributed: policy %s; %d prompts, processes %s, %d repeat(s)", policy, sz.n_prompts,
                    sz.processes, sz.repeats)
        names = list(sz.processes)
        if sz.warmup:  # page cache, compiled bytecode: not counted
            for n in names:
                launch(n, policy_dir, tmp_path / "warmup.json", sz, max(2 * n, 4))
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(sz.repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                res = launch(n, policy_dir, tmp_path / f"run-{n}-{r}.json", sz, sz.n_prompts)
                runs[n].append(res)
                logger.info("distributed: %d process(es), repeat %d: build %.2f s (per process %s), launch %.1f s, "
                            "%d pairs, generate calls %s", n, r, res["build_s"],
                            [round(p["build_s"], 2) for p in res["per_process"]], res["launch_s"], res["pairs"],
                            [p["generate_calls"] for p in res["per_process"]])
    return _report(sz, runs, policy)


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _report(sz: DistSize, runs: dict[int, list[dict[str, Any]]], policy: dict[str, Any]):
    one, two = min(runs), max(runs)
    per_n: dict[str, Any] = {}
    for n, rs in runs.items():
        build = [r["build_s"] for r in rs]
        launch_s = [r["launch_s"] for r in rs]
        per_proc = [r["per_process"] for r in rs]
        per_n[str(n)] = {
            "build_s": build, "launch_s": launch_s,
            "build_s_median": _med(build), "launch_s_median": _med(launch_s),
            "outside_build_s_median": _med([a - b for a, b in zip(launch_s, build)]),
            "pairs": [r["pairs"] for r in rs],
            "generate_calls_per_process": [[p["generate_calls"] for p in pp] for pp in per_proc],
            "prompts_per_process": [p["n_prompts"] for p in per_proc[0]],
            "build_s_per_process": [[round(p["build_s"], 3) for p in pp] for pp in per_proc],
            "build_cpu_s_per_process": [[round(p["build_cpu_s"], 3) for p in pp] for pp in per_proc],
            # each process's own sampling and judging (up to its first gather of the pairs)
            "own_work_s_per_process": [[round(p["own_work_s"], 3) for p in pp] for pp in per_proc],
            # the rest of the build: gathers and hash check, including the wait for the slower process
            "gather_s_per_process": [[round(p["gather_s"], 3) for p in pp] for pp in per_proc],
            # max / mean of the processes' own work: 1.0 = perfectly balanced shards
            "imbalance": [round(max(p["own_work_s"] for p in pp) / statistics.mean(p["own_work_s"] for p in pp), 3)
                          for pp in per_proc],
            "phases_s_median": {k: _med([statistics.mean(p["phases"][k] for p in pp) for pp in per_proc])
                                for k in per_proc[0][0]["phases"]},
            "load_avg": [r["load_avg"] for r in rs],
            "pair_stats": rs[0]["pair_stats"],
        }
    b1, b2 = per_n[str(one)]["build_s_median"], per_n[str(two)]["build_s_median"]
    l1, l2 = per_n[str(one)]["launch_s_median"], per_n[str(two)]["launch_s_median"]
    calls = {n: per_n[str(n)]["generate_calls_per_process"][0] for n in (one, two)}
    pairs = {n: per_n[str(n)]["pairs"][0] for n in (one, two)}
    cpu1 = _med([max(x) for x in per_n[str(one)]["build_cpu_s_per_process"]])
    cpu2 = _med([max(x) for x in per_n[str(two)]["build_cpu_s_per_process"]])
    imb = _med(per_n[str(two)]["imbalance"])
    what = (f"{sz.n_prompts} arith prompts, K={sz.num_candidates}, <= {sz.max_solution_steps} steps of <= "
            f"{sz.max_new_tokens} tokens, tiny GPT-2 ({policy['params'] / 1e6:.2f}M params), 1 thread/process")
    rows = [
        comparison(f"online pair building, {two} vs {one} CPU process(es)", ours=(f"{two} processes", b2, "s"),
                   baseline=(f"{one} process", b1, "s"), target=TARGET, higher_is_better=False,
                   notes=(f"{what}; median of {sz.repeats} launch(es) each, time = slowest process from a barrier "
                          f"to its pairs gathered; pairs {pairs[two]} vs {pairs[one]}; generate calls per process "
                          f"{calls[two]} vs {calls[one]}; largest per-process CPU time {cpu2:.1f} vs {cpu1:.1f} s; "
                          f"shard imbalance (slowest / mean own work) {imb:.2f}")),
        comparison(f"whole accelerate launch, {two} vs {one} CPU process(es)", ours=(f"{two} processes", l2, "s"),
                   baseline=(f"{one} process", l1, "s"), target=None, higher_is_better=False,
                   notes=(f"the same launches' wall time: start-up, imports, policy load, trainer set-up, pair "
                          f"building, exit (outside pair building: {per_n[str(two)]['outside_build_s_median']:.1f} "
                          f"vs {per_n[str(one)]['outside_build_s_median']:.1f} s)")),
    ]
    details = {"n_prompts": sz.n_prompts, "repeats": sz.repeats, "warmup": sz.warmup,
               "num_candidates": sz.num_candidates, "max_new_tokens": sz.max_new_tokens,
               "max_solution_steps": sz.max_solution_steps, "sample_batch_size": sz.batch_size,
               "threads_per_process": 1, "clock": "wall", "launcher": f"accelerate launch --config_file "
               f"{CONFIG.relative_to(ROOT)} --num_processes N", "policy": policy,
               "build_ratio": round(b2 / b1, 3), "launch_ratio": round(l2 / l1, 3),
               "build_cpu_ratio": round(cpu2 / cpu1, 3), "processes": per_n}
    return rows, details


def run(mode: str, device: torch.device, **_: Any) -> dict[str, Any]:
    return run_sizes(sizes(mode), run_size, device)


# -- the worker (one per process, under accelerate launch) ------------------------------------------
def _right(prompt, steps, expression) -> bool:
    from stepdpo.tasks.arith import check_solution

    return check_solution(expression, steps).correct


def worker(a: argparse.Namespace) -> None:
    started = time.time()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo import distributed as dist
    from stepdpo.config import StepwiseDPOConfig
    from stepdpo.sampling import StepSampler
    from stepdpo.tasks.arith import ArithConfig, checker_reward_model, make_samples
    from stepdpo.trainer import StepwiseDPOTrainer

    imported = time.time()
    num, rank = dist.init_distributed()
    torch.set_num_threads(1)
    policy = Path(a.policy)
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, use_safetensors=True)
    cfg = ArithConfig(**json.loads((policy / "arith.json").read_text()))
    problems = make_samples(a.prompts, seed=PROMPT_SEED, cfg=cfg)
    prompts, answers = [p.prompt for p in problems], [p.meta["expression"] for p in problems]
    args = StepwiseDPOConfig(output_dir=str(Path(a.out).parent / f"trainer-{num}"), report_to=[], max_steps=1,
                             per_device_train_batch_size=2, save_strategy="no", gradient_checkpointing=False,
                             logging_steps=1, disable_tqdm=True, seed=0, rounds=1,
                             num_candidates=a.num_candidates, sample_max_new_tokens=a.max_new_tokens,
                             max_solution_steps=a.max_solution_steps, sample_temperature=1.0,
                             sample_batch_size=a.batch_size)
    # warm-up (not timed): one small generate call, so first-call costs fall outside the build
    StepSampler(model, tok, args.step_format, max_new_tokens=4, temperature=1.0, seed=0).sample_next_steps(
        prompts[:1], [[]], k=2)
    timing: dict[str, float] = {}

    class TimedTrainer(StepwiseDPOTrainer):
        def _build_pair_dataset(self, *args_, **kwargs):
            dist.barrier()
            timing["t0"], timing["c0"] = time.perf_counter(), time.process_time()
            timing["start_epoch"] = time.time()
            gather = dist.gather

            def first_gather(*x):  # the first gather of the pairs: this process's own sampling and judging are done
                timing.setdefault("own_done", time.perf_counter())
                return gather(*x)

            dist.gather = first_gather  # the trainer looks it up on the module at call time
            try:
                ds = super()._build_pair_dataset(*args_, **kwargs)
            finally:
                dist.gather = gather
            timing["t1"], timing["c1"] = time.perf_counter(), time.process_time()
            dist.barrier()
            timing["t2"] = time.perf_counter()
            return ds

    before_trainer = time.time()
    trainer = TimedTrainer(model=model, args=args, tokenizer=tok, prompts=prompts, answers=answers,
                           answer_checker=_right, reward_model=checker_reward_model(cfg))
    done = time.time()
    log = trainer.shard_log[0]
    mine = {"process": rank, "n_prompts": len(log["prompts"]), "generate_calls": log["generate_calls"],
            "build_s": timing["t1"] - timing["t0"], "build_cpu_s": timing["c1"] - timing["c0"],
            "own_work_s": timing.get("own_done", timing["t1"]) - timing["t0"],
            "gather_s": timing["t1"] - timing.get("own_done", timing["t1"]),
            "build_with_barrier_s": timing["t2"] - timing["t0"],
            "phases": {"start_to_main": started - a.launched_at, "imports": imported - started,
                       "setup_before_build": timing["start_epoch"] - imported,
                       "trainer_init_outside_build": (done - before_trainer) - (timing["t2"] - timing["t0"])}}
    everyone = dist.gather_object(mine)
    if rank == 0:
        res = {"processes": num, "n_prompts": len(prompts), "pairs": len(trainer.last_pairs),
               "pair_stats": trainer.pair_stats[0], "build_s": max(p["build_s"] for p in everyone),
               "per_process": everyone, "load_avg": load_avg()}
        Path(a.out).write_text(json.dumps(res))
    dist.shutdown()


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description="worker of bench.distributed "
                                "(started by the benchmark under accelerate launch)")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", type=int, required=True)
    p.add_argument("--num-candidates", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--max-solution-steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--launched-at", type=float, default=None)
    return p


if __name__ == "__main__":
    ns = worker_parser().parse_args()
    if ns.launched_at is None:
        ns.launched_at = time.time()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    worker(ns)
