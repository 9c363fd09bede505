"""Trainer overhead: ``StepwiseDPOTrainer`` vs plain ``trl.DPOTrainer`` on identical pairs.

Each configuration trains in a fresh subprocess (``python -m bench.trainer --worker JSON``) so
that peak memory is its own: ``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on GPU.
Memory is reported as the peak and as the increase over the process's footprint just before
the trainer is built (model, tokenizer and pairs already in memory): the trainer's own cost
(reference copy, optimizer state, gradients, activations). Subprocesses of the two contenders
alternate and the median over repeats is reported.

* same pairs: step pairs from the arithmetic task (gold step vs an injected error after a gold
  prefix); ``StepwiseDPOTrainer`` gets them as :class:`~reward_models.types.StepPair`s, the plain
  trainer as ``prompt`` (problem + prefix) / ``chosen`` / ``rejected`` text;
* same model init (seed 0), same arguments (batch 8, lr 1e-5, no gradient checkpointing,
  ``max_steps``), both with an in-memory reference copy;
* time per step: median of the trainer's own step times (``on_step_begin`` to ``on_step_end``
  callbacks; CPU time of the process on CPU, wall time on CUDA), skipping the first steps
  (warm-up); trainer construction is excluded.

LoRA mode (``peft_config``, reference = adapter disabled) vs full fine-tuning with a separate
reference model: peak memory of the same stepwise run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bench.common import ROOT, comparison, med

logger = logging.getLogger(__name__)


@dataclass
class TrainerRun:
    trainer: str  # "trl" | "stepwise"
    lora: bool
    backbone: str
    max_steps: int
    batch_size: int = 8
    skip_steps: int = 2  # warm-up steps left out of the median
    threads: int = 1
    dtype: str = "float32"  # weights (bf16: trained with bf16=True)
    device: str | None = None  # None: CUDA when available, else CPU


def make_pairs(n: int, seed: int = 0):
    """``n`` step pairs: after a gold prefix, the gold step (chosen) vs an injected error.

    >>> p = make_pairs(3)
    >>> len(p), p[0].chosen != p[0].rejected
    (3, True)
    """
    from reward_models.types import StepPair
    from stepdpo.tasks.arith import ArithConfig, gold_steps, make_samples, parse_expression

    samples = make_samples(n, seed, ArithConfig(min_steps=2, max_steps=4), error_rate=1.0)
    pairs = []
    for s in samples:
        e = s.meta["first_error"]
        gold = gold_steps(parse_expression(s.meta["expression"]))
        pairs.append(StepPair(prompt=s.prompt, prefix_steps=gold[:e], chosen=gold[e], rejected=s.steps[e],
                              is_final=e == len(gold) - 1 and e == len(s.steps) - 1))
    return pairs


def as_trl_rows(pairs, step_format) -> list[dict[str, str]]:
    """The same pairs as plain DPO text: prompt = problem + prefix, completions = the step's piece."""
    return [{"prompt": p.prompt + step_format.join(p.prefix_steps, complete=False),
             "chosen": step_format.piece(p.chosen, last=p.is_final), "rejected": step_format.piece(p.rejected,
                                                                                                    last=p.is_final)}
            for p in pairs]


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def worker(cfg: TrainerRun) -> dict[str, Any]:
    """Train one configuration in this process and return its timings and memory."""
    import gc

    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from bench import models
    from reward_models.testing import tiny_tokenizer
    from stepdpo.config import StepwiseDPOConfig
    from stepdpo.trainer import StepwiseDPOTrainer

    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = tiny_tokenizer()
    dtype = models.DTYPES[cfg.dtype]
    # built on the GPU directly (a 1.5B model is not initialised on the CPU first); peak memory is reset below
    model = models.build("causal_lm", cfg.backbone, tok, device=device, dtype=dtype).train()
    pairs = make_pairs(cfg.max_steps * cfg.batch_size)
    step_times: list[float] = []

    # CPU time of this process on CPU (immune to load from other processes), wall time on CUDA
    now = time.perf_counter if device.type == "cuda" else time.process_time
    wall_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.t0, self.w0 = now(), time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_times.append(now() - self.t0)
            wall_times.append(time.perf_counter() - self.w0)

    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        b = models.spec(cfg.backbone)
        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(b.lora_targets),
                                 fan_in_fan_out=b.lora_fan_in_fan_out, task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        common = dict(output_dir=out, report_to=[], max_steps=cfg.max_steps,
                      per_device_train_batch_size=cfg.batch_size, learning_rate=1e-5, save_strategy="no",
                      gradient_checkpointing=False, logging_steps=10_000, disable_tqdm=True, seed=0,
                      bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu" and (torch.cuda.is_available() or dtype != torch.float32),
                      dataloader_num_workers=0)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = _peak_bytes(device) if device.type == "cuda" else _current_rss()
        t_init = time.perf_counter()
        if cfg.trainer == "stepwise":
            trainer = StepwiseDPOTrainer(model=model, args=StepwiseDPOConfig(**common), train_dataset=pairs,
                                         processing_class=tok, peft_config=peft_config)
        else:
            from datasets import Dataset

            ref = None
            if not cfg.lora:
                import copy

                ref = copy.deepcopy(model).eval().requires_grad_(False)
            trainer = DPOTrainer(model=model, ref_model=ref, args=DPOConfig(**common),
                                 train_dataset=Dataset.from_list(as_trl_rows(pairs, StepwiseDPOConfig(
                                     output_dir=out, report_to=[]).step_format)),
                                 processing_class=tok, peft_config=peft_config)
        init_s = time.perf_counter() - t_init
        trainer.add_callback(StepTimer())
        t_train = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - t_train
        peak = _peak_bytes(device)
    counted = step_times[cfg.skip_steps:] if len(step_times) > cfg.skip_steps else step_times
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"config": asdict(cfg), "device": str(device), "clock": "wall" if device.type == "cuda" else "cpu",
            "step_times_s": step_times, "step_wall_times_s": wall_times,
            "median_step_s": med(counted), "train_runtime_s": result.metrics.get("train_runtime", train_s),
            "init_s": init_s, "peak_bytes": peak, "before_trainer_bytes": before,
            "trainer_peak_increase_bytes": max(peak - before, 0), "trainable_params": n_trainable,
            "has_ref_model": getattr(trainer, "ref_model", None) is not None,
            "train_loss": result.metrics.get("train_loss")}


def _current_rss() -> int:
    """Resident set size now (CPU)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return _peak_bytes(torch.device("cpu"))


def run_worker(cfg: TrainerRun, isolate: bool = True) -> dict[str, Any]:
    """Run :func:`worker` in a fresh Python process (its own peak memory); ``isolate=False``
    runs it in this process (smoke mode: seconds matter there, memory figures do not)."""
    if not isolate:
        return json.loads(json.dumps(worker(cfg)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", WANDB_DISABLED="true", OMP_NUM_THREADS=str(cfg.threads))

    proc = subprocess.run([sys.executable, "-m", "bench.trainer", "--worker", json.dumps(asdict(cfg))], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"trainer worker {asdict(cfg)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def sizes(mode: str, backbones: list[str] | None = None) -> dict[str, Any]:
    """``time``: (backbone, steps, repeats, warm-up steps skipped); ``memory``: (backbone, steps).
    With ``backbones`` both run on the first one named (two repeats: a large model on a GPU)."""
    if mode == "smoke":
        out = {"time": ("tiny", 3, 1, 1), "memory": ("tiny", 3)}
    elif mode == "quick":
        out = {"time": ("tiny", 20, 3, 2), "memory": ("tiny", 4)}
    else:
        out = {"time": ("tiny", 20, 3, 2), "memory": ("gpt2-100m", 4)}
    if backbones:
        (_, steps, repeats, skip), (_, mem_steps) = out["time"], out["memory"]
        out = {"time": (backbones[0], steps, min(repeats, 2), skip), "memory": (backbones[0], mem_steps)}
    return out


def _mib(b: float) -> float:
    return b / 2**20


def run(mode: str, device: torch.device, threads: int = 1, dtype: torch.dtype = torch.float32,
        backbones: list[str] | None = None) -> dict[str, Any]:
    sz = sizes(mode, backbones)
    isolate = mode != "smoke"
    opts = {"threads": threads, "dtype": str(dtype).replace("torch.", ""), "device": str(device)}
    backbone, steps, repeats, skip = sz["time"]
    runs: dict[str, list[dict[str, Any]]] = {"trl": [], "stepwise": []}
    for r in range(repeats):  # alternate the two contenders
        for name in (("trl", "stepwise") if r % 2 == 0 else ("stepwise", "trl")):
            logger.info("trainer %s, repeat %d", name, r)
            runs[name].append(run_worker(TrainerRun(name, False, backbone, steps, skip_steps=skip, **opts), isolate))
    step = {k: med([x["median_step_s"] for x in v]) for k, v in runs.items()}
    peak = {k: med([x["peak_bytes"] for x in v]) for k, v in runs.items()}
    inc = {k: med([x["trainer_peak_increase_bytes"] for x in v]) for k, v in runs.items()}
    mem_backbone, mem_steps = sz["memory"]
    logger.info("trainer memory: LoRA vs full on %s", mem_backbone)
    if (mem_backbone, mem_steps) == (backbone, steps):  # the same run: reuse it
        full = runs["stepwise"][0]
    else:
        full = run_worker(TrainerRun("stepwise", False, mem_backbone, mem_steps, skip_steps=1, **opts), isolate)
    lora = run_worker(TrainerRun("stepwise", True, mem_backbone, mem_steps, skip_steps=1, **opts), isolate)
    mem_unit = "MiB peak allocated (GPU)" if device.type == "cuda" else "MiB peak RSS"
    rows = [
        comparison(f"DPO time per step, {backbone} backbone", ours=("StepwiseDPOTrainer", step["stepwise"] * 1e3, "ms"),
                   baseline=("trl.DPOTrainer", step["trl"] * 1e3, "ms"), target=1.05, higher_is_better=False,
                   notes=(f"{steps} steps at batch 8, median step time over steps {skip + 1}-{steps}, median of "
                          f"{repeats} alternating runs each; train_runtime {med([x['train_runtime_s'] for x in runs['stepwise']]):.2f} s vs "
                          f"{med([x['train_runtime_s'] for x in runs['trl']]):.2f} s")),
        comparison(f"DPO peak memory, {backbone} backbone", ours=("StepwiseDPOTrainer", _mib(peak["stepwise"]), mem_unit),
                   baseline=("trl.DPOTrainer", _mib(peak["trl"]), mem_unit), target=None, higher_is_better=False,
                   notes=(f"increase while building + training: {_mib(inc['stepwise']):.0f} MiB vs "
                          f"{_mib(inc['trl']):.0f} MiB")),
        comparison(f"LoRA vs full + reference model, peak memory, {mem_backbone} backbone",
                   ours=("LoRA (reference = adapter off)", _mib(lora["peak_bytes"]), mem_unit),
                   baseline=("full + reference copy", _mib(full["peak_bytes"]), mem_unit), target=None,
                   higher_is_better=False,
                   notes=(f"StepwiseDPOTrainer, {mem_steps} steps at batch 8; increase while building + training: "
                          f"LoRA {_mib(lora['trainer_peak_increase_bytes']):.0f} MiB vs full "
                          f"{_mib(full['trainer_peak_increase_bytes']):.0f} MiB "
                          f"({lora['trainer_peak_increase_bytes'] / max(full['trainer_peak_increase_bytes'], 1):.2f}x); "
                          f"trainable parameters {lora['trainable_params']:,} vs {full['trainable_params']:,}; "
                          f"reference model object: {lora['has_ref_model']} vs {full['has_ref_model']}")),
    ]
    return {"rows": rows, "details": {"time_runs": runs, "memory_runs": {"full": full, "lora": lora},
                                      "isolated_processes": isolate}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="internal: one trainer benchmark configuration")
    p.add_argument("--worker", required=True, help="TrainerRun as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = worker(TrainerRun(**json.loads(args.worker)))
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
