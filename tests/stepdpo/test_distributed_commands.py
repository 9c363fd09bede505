"""`stepdpo label`, `evaluate` and `decode` under `accelerate launch` with two processes.

Real two-process runs (gloo on the CPU, configs/accelerate/multi_cpu.yaml): each process works
on its shard of the inputs, the main process alone writes the outputs, which hold every input
row exactly once, in input order, and the summary JSON says ``processes: 2``. Seven inputs, so
the second process pads its shard (three real items and a repeat whose results are dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepdpo.commands import command_module
from stepdpo.commands.common import read_data, run

pytestmark = pytest.mark.smoke

ROOT = Path(__file__).resolve().parents[2]
MULTI_CPU = ROOT / "configs" / "accelerate" / "multi_cpu.yaml"
N = 7
TIMEOUT = 240  # seconds; a hang (processes waiting on each other) fails the test instead of blocking it


def launch_two(launch, script: str, *args: str):
    """The command under 2 processes; only the main process prints its summary."""
    proc, _ = launch(script, *args, timeout=TIMEOUT)
    assert proc.stdout.count(f"[stepdpo {script}]") == 1, "only the main process prints the summary"
    return proc


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}  # hidden temporary files (.NAME.*.tmp) included


def unique_prompts(arith_error_rate: float) -> list[str]:
    """The problems of the test split, as the command reads them (its default error rate)."""
    return list(dict.fromkeys(read_data(f"arith:{N}", split="test", arith_error_rate=arith_error_rate).prompts))


def test_label_two_processes(tmp_path, two_processes):
    from reward_models.data import load_samples
    from reward_models.types import StepSample

    argv = ["--model_name_or_path", "tiny-gpt2", "--dataset_name", f"arith:{N}", "--dry_run"]
    out = tmp_path / "two"
    launch_two(two_processes, "label", *argv, "--output_file", str(out / "labels.jsonl"))
    assert files_in(out) == {"labels.jsonl", "labels.jsonl.stats.json"}
    rows = load_samples(out / "labels.jsonl")
    given = read_data(f"arith:{N}", split="train", arith_error_rate=0.5).of_type(StepSample)
    assert [(s.prompt, s.steps) for s in rows] == [(s.prompt, s.steps) for s in given]  # each once, in order
    stats = json.loads((out / "labels.jsonl.stats.json").read_text())
    assert stats["processes"] == 2 and stats["solutions"] == N and stats["steps"] == sum(len(s.steps) for s in given)
    for s in rows:
        assert len(s.labels) == len(s.steps) and all(0.0 <= v <= 1.0 for v in s.labels)
        assert len(s.meta["mc"]) == len(s.steps) and s.meta["mc_rollouts"] == 2

    single = run(command_module("label"), [*argv, "--output_file", str(tmp_path / "one.jsonl")], "label")
    assert single["processes"] == 1
    # The same labels as one process. Not guaranteed by construction: a process seeds its rollouts
    # per batch of its own prefixes, so the two runs sample different completions. But a prefix the
    # checker accepts as it is gets 1 without rollouts (the same in both runs), and the random tiny
    # policy never completes an arithmetic solution correctly, so every rolled-out step gets 0 either way.
    assert [s.to_dict() for s in rows] == [s.to_dict() for s in load_samples(tmp_path / "one.jsonl")]
    assert {k: v for k, v in stats.items() if k not in ("processes", "output_file", "versions")} == \
        {k: v for k, v in single.items() if k not in ("processes", "output_file")}


def test_evaluate_two_processes(tmp_path, two_processes):
    argv = ["--model_name_or_path", "tiny-gpt2", "--reward_model", "checker:arith", "--dataset_name", f"arith:{N}",
            "--n", "2", "--dry_run"]
    out = tmp_path / "two"
    launch_two(two_processes, "evaluate", *argv, "--output_dir", str(out))
    assert files_in(out) == {"metrics.json", "per_problem.jsonl", "calibration.png", "step_scores.png",
                             "accuracy.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    rows = [json.loads(line) for line in (out / "per_problem.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == unique_prompts(0.5)  # every problem once, in input order
    for kind in ("greedy", "best-of-2", "majority-of-2"):  # accuracies count the gathered rows, not a shard
        assert metrics["policy"][kind]["total"] == len(rows)
        assert metrics["policy"][kind]["correct"] == sum(r[kind] for r in rows)
    # the checker scores every solution the same in any batch: the reward-model metrics, computed
    # from the scores gathered in input order, equal a one-process run's
    single = run(command_module("evaluate"), [*argv, "--output_dir", str(tmp_path / "one")], "evaluate")
    assert metrics["reward_model"]["n_samples"] == N
    assert metrics["reward_model"] == json.loads(json.dumps(single["reward_model"]))


def test_decode_two_processes(tmp_path, two_processes):
    out = tmp_path / "two"
    launch_two(two_processes, "decode", "--model_name_or_path", "tiny-gpt2", "--reward_model", "checker:arith", "--method", "beam",
               "--dataset_name", f"arith:{N}", "--dry_run", "--output_file", str(out / "decoded.jsonl"))
    assert files_in(out) == {"decoded.jsonl", "decoded.jsonl.metrics.json"}
    rows = [json.loads(line) for line in (out / "decoded.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == unique_prompts(0.0)  # every problem once, in input order
    assert all(len(r["step_scores"]) == len(r["steps"]) and isinstance(r["correct"], bool) for r in rows)
    summary = json.loads((out / "decoded.jsonl.metrics.json").read_text())
    assert summary["processes"] == 2 and summary["problems"] == N
    assert summary["finished"] == sum(r["finished"] for r in rows)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / N)
