"""Sharding helpers, and real 2-process runs (``accelerate launch``, gloo on the CPU) of the
trainer's online pair building, ``stepdpo train`` and ``stepdpo build-pairs``."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from stepdpo import distributed as dist

ROOT = Path(__file__).resolve().parents[2]


def test_shards_cover_every_item_once_with_equal_lengths():
    for n in range(0, 12):
        for procs in (1, 2, 3, 5):
            shards = [dist.shard(list(range(n)), procs, r) for r in range(procs)]
            assert len({len(items) for items, _ in shards}) == 1  # padded to one length: the same number of calls
            real = [x for items, k in shards for x in items[:k]]
            assert real == list(range(n))


def test_single_process_helpers_are_identity(tmp_path):
    assert dist.world() == (1, 0) and dist.is_main_process()
    assert dist.gather([1, 2]) == [1, 2] and dist.gather_object("x") == ["x"] and dist.broadcast(3) == 3
    assert dist.check_same({"a": [1]}, "things") == dist.content_hash({"a": [1]})
    assert dist.content_hash([1, 2]) != dist.content_hash([2, 1])
    path = dist.atomic_write_text(tmp_path / "sub" / "f.json", "{}")
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temp file left
    umask = os.umask(0o022)
    try:
        assert dist.atomic_write_text(tmp_path / "g.json", "1").stat().st_mode & 0o777 == 0o644  # as open() would
    finally:
        os.umask(umask)


@pytest.fixture(scope="module")
def policy_dir(arith_policy, tmp_path_factory):
    model, tok, cfg = arith_policy
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    (path / "arith.json").write_text(json.dumps(dataclasses.asdict(cfg)))  # the policy's task, for the worker
    return path


def test_two_processes_shard_pair_building_and_train_on_the_same_pairs(policy_dir, tmp_path, two_processes):
    from stepdpo.tasks.arith import ArithConfig, make_samples

    proc, _ = two_processes(str(ROOT / "tests/stepdpo/distributed_worker.py"), "train", str(policy_dir), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    cfg = ArithConfig(**json.loads((policy_dir / "arith.json").read_text()))
    prompts = [p.prompt for p in make_samples(10, seed=41, cfg=cfg)]
    for r, res in enumerate(ranks):
        log = res["online"]["shard_log"]
        assert [entry["round"] for entry in log] == [0, 1]
        for entry in log:  # each process sampled its own half of the prompts, nothing else
            assert entry["process"] == r and entry["prompts"] == prompts[5 * r: 5 * r + 5]
            assert entry["generate_calls"] > 0 and entry["generated_tokens"] > 0 and entry["device"] == "cpu"
        stats = res["online"]["pair_stats"]
        assert [s["round"] for s in stats] == [0, 1] and all(s["processes"] == 2 for s in stats)
        assert all(s["n_prompts"] == 10 and s["pairs"] > 0 for s in stats)  # both halves gathered: every prompt once
        for s, mine in zip(stats, log):  # tokens of both processes, the time of the slower one
            assert s["generated_tokens"] > mine["generated_tokens"] and s["generate_seconds"] >= mine["generate_seconds"]
        assert res["online"]["global_step"] == 1 and res["online"]["has_ref_logps"]  # rounds ran; precompute worked
        assert res["online"]["max_param_change"] > 0
    a, b = (res["online"] for res in ranks)
    assert a["round0_pairs_hash"] == b["round0_pairs_hash"] and a["last_pairs_hash"] == b["last_pairs_hash"]
    assert a["pair_stats"] == b["pair_stats"] and a["round0_pairs_hash"] != a["last_pairs_hash"]
    # given pairs with precomputed reference log-probs: the same values on both processes
    ga, gb = (res["given"] for res in ranks)
    assert ga["ref_chosen_logps"] == gb["ref_chosen_logps"] and len(ga["ref_chosen_logps"]) == a["n_last_pairs"]
    assert all(v < 0 for v in ga["ref_chosen_logps"]) and ga["global_step"] == 1
    # each round keeps its own checkpoints (the step counter restarts every round)
    for r in (0, 1):
        assert (tmp_path / "online" / f"round-{r}" / "checkpoint-1" / "trainer_state.json").is_file()


def test_different_prompts_on_two_processes_fail_fast_with_a_clear_error(policy_dir, tmp_path, two_processes):
    proc, seconds = two_processes(str(ROOT / "tests/stepdpo/distributed_worker.py"), "mismatch", str(policy_dir),
                                  str(tmp_path), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "RankMismatchError" in out and "differ between the processes" in out
    assert seconds < 120  # launch and imports only: no process waited on a collective
    assert not list(tmp_path.glob("rank*.json"))


def test_train_and_build_pairs_commands_with_two_processes(tmp_path, two_processes):
    out = tmp_path / "train"
    proc, _ = two_processes("train_stepdpo", "--config", str(ROOT / "configs/demo_stepdpo.yaml"), "--dry_run",
                            "--output_dir", str(out), "--use_peft", "true", "--lora_r", "4")  # LoRA: samples through the adapter
    summary = json.loads((out / "stepdpo_train.json").read_text())
    assert summary["global_step"] > 0 and summary["pair_stats"][0]["processes"] == 2
    assert (out / "base_model" / "model.safetensors").is_file()  # the tiny model, built once for both processes
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # the adapter trained

    pairs_file = tmp_path / "pairs" / "pairs.jsonl"
    proc, _ = two_processes("build_pairs", "--model_name_or_path", str(out / "sft_model"),
                     "--dataset_name", "arith:10", "--reward_model", "checker:arith", "--num_candidates", "4",
                     "--sample_temperature", "1.0", "--max_solution_steps", "4", "--sample_max_new_tokens", "16",
                     "--output_file", str(pairs_file))
    stats = json.loads((tmp_path / "pairs" / "pairs.jsonl.stats.json").read_text())
    assert stats["processes"] == 2 and stats["problems"] == 10 and stats["stats"]["n_prompts"] == 10
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    assert len(rows) == stats["pairs"] > 0
    assert sorted(p.name for p in pairs_file.parent.iterdir()) == ["pairs.jsonl", "pairs.jsonl.stats.json"]


def test_different_pairs_with_precomputed_reference_fail_fast(policy_dir, tmp_path, two_processes):
    """Reference log-probs are precomputed while the trainer is built, before train()'s check of the
    pairs: the precompute step checks them first, so the processes stop together with the reason."""
    proc, seconds = two_processes(str(ROOT / "tests/stepdpo/distributed_worker.py"), "mismatch_pairs",
                                  str(policy_dir), str(tmp_path), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "RankMismatchError" in out and "pairs" in out and "differ between the processes" in out
    assert seconds < 120
    assert not list(tmp_path.glob("rank*.json"))


def test_fsdp2_policy_samples_unsharded_with_different_call_counts(policy_dir, tmp_path, two_processes):
    """Under FSDP 2 each block's forward all-gathers its shards (a collective); inside
    ``fsdp2_unsharded`` the processes make different numbers of generate calls without waiting
    on each other, sample what the unsharded model samples, and are sharded again after."""
    proc, seconds = two_processes(str(ROOT / "tests/stepdpo/distributed_worker.py"), "fsdp2", str(policy_dir),
                                  str(tmp_path), timeout=120)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["generate_calls"] for r in ranks][0] > [r["generate_calls"] for r in ranks][1] > 0
    for res in ranks:
        assert res["sharded_before"] and res["unsharded_inside"] and res["sharded_after"]
        assert res["samples"] == res["plain_samples"] and all(res["samples"])
        assert res["logits_diff_after"] < 1e-5
