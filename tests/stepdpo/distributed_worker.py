"""Run by ``tests/stepdpo/test_distributed.py`` under ``accelerate launch`` with 2 CPU processes.

``python distributed_worker.py train POLICY_DIR OUT_DIR``: Stepwise DPO from prompts (2 rounds,
precomputed reference log-probs) and then on given pairs (precomputed too); each process writes
``OUT_DIR/rank<r>.json`` with what it sampled, the pairs it holds and what training did.

``python distributed_worker.py mismatch POLICY_DIR OUT_DIR``: process 1 is given different
prompts; the trainer must refuse on every process at once.

``python distributed_worker.py mismatch_pairs POLICY_DIR OUT_DIR``: process 1 is given one pair
fewer, with precomputed reference log-probs (computed while the trainer is built, before
``train()``); the trainer must refuse on every process at once.

``python distributed_worker.py fsdp2 POLICY_DIR OUT_DIR``: the policy sharded with FSDP 2
(``fully_shard`` per block and at the root, a CPU mesh); inside
:func:`stepdpo.distributed.fsdp2_unsharded` process 0 samples 3 prompts and process 1 one, one
prompt per ``generate`` call (different numbers of forwards on each process); each writes its
samples, those of an unsharded copy, and what the parameters look like after the block.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _right(prompt, steps, expression) -> bool:
    from stepdpo.tasks.arith import check_solution

    return check_solution(expression, steps).correct


def main(mode: str, policy_dir: str, out_dir: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo import distributed as dist
    from stepdpo.config import StepwiseDPOConfig
    from stepdpo.tasks.arith import ArithConfig, checker_reward_model, make_samples
    from stepdpo.trainer import StepwiseDPOTrainer

    num, rank = dist.init_distributed()
    assert num == 2, f"expected 2 processes, got {num}"
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, use_safetensors=True)
    cfg = ArithConfig(**json.loads((Path(policy_dir) / "arith.json").read_text()))
    problems = make_samples(10, seed=41, cfg=cfg)
    prompts, answers = [p.prompt for p in problems], [p.meta["expression"] for p in problems]
    if mode == "fsdp2":
        _fsdp2(model, tok, prompts, rank, out_dir)
        return
    if mode == "mismatch_pairs":
        from reward_models.types import StepPair

        pairs = [StepPair(prompt=p.prompt, prefix_steps=p.steps[:1], chosen=p.steps[1], rejected=p.steps[1] + "0")
                 for p in problems if len(p.steps) > 1]
        args = StepwiseDPOConfig(output_dir=f"{out_dir}/given", report_to=[], max_steps=1,
                                 per_device_train_batch_size=2, save_strategy="no", gradient_checkpointing=False,
                                 disable_tqdm=True, seed=0, precompute_ref_log_probs=True)
        StepwiseDPOTrainer(model=model, args=args, tokenizer=tok, train_dataset=pairs[: len(pairs) - rank])
        Path(out_dir, f"rank{rank}.json").write_text("{}")  # not reached: the trainer refuses first
        return
    if mode == "mismatch" and rank == 1:
        prompts, answers = prompts[::-1], answers[::-1]  # a deliberate difference between the processes
    args = StepwiseDPOConfig(output_dir=f"{out_dir}/online", report_to=[], max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-3, save_strategy="steps", save_steps=1, gradient_checkpointing=False,
                             logging_steps=1, disable_tqdm=True, seed=0, rounds=2, regenerate_every_steps=1,
                             num_candidates=4, sample_max_new_tokens=12, max_solution_steps=4,
                             sample_temperature=1.0, precompute_ref_log_probs=True)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = StepwiseDPOTrainer(model=model, args=args, tokenizer=tok, prompts=prompts, answers=answers,
                                 answer_checker=_right, reward_model=checker_reward_model(cfg))
    rounds = []
    round0 = [trainer.train_dataset[i]["prompt_ids"] for i in range(len(trainer.train_dataset))]
    rounds.append(dist.content_hash(round0))
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    moved = max((p.detach() - before[k]).abs().max().item() for k, p in policy.named_parameters())
    online = {"shard_log": trainer.shard_log, "pair_stats": trainer.pair_stats, "global_step": trainer.state.global_step,
              "round0_pairs_hash": rounds[0],
              "last_pairs_hash": dist.content_hash([p.to_dict() for p in trainer.last_pairs]),
              "n_last_pairs": len(trainer.last_pairs), "max_param_change": moved,
              "has_ref_logps": "ref_chosen_logps" in trainer.train_dataset.column_names}
    # given pairs (as from a pairs JSONL) with precomputed reference log-probs
    pairs = trainer.last_pairs
    args2 = StepwiseDPOConfig(output_dir=f"{out_dir}/given", report_to=[], max_steps=1, per_device_train_batch_size=2,
                              learning_rate=1e-3, save_strategy="no", gradient_checkpointing=False, logging_steps=1,
                              disable_tqdm=True, seed=0, precompute_ref_log_probs=True)
    given = StepwiseDPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir, use_safetensors=True),
                               args=args2, tokenizer=tok, train_dataset=pairs)
    ref = list(given.train_dataset["ref_chosen_logps"])
    given.train()
    result = {"rank": rank, "online": online,
              "given": {"ref_chosen_logps": ref, "global_step": given.state.global_step,
                        "cache_hit": given.ref_logps_cache_hit}}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.shutdown()


def _fsdp2(model, tok, prompts, rank: int, out_dir: str) -> None:
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from stepdpo import distributed as dist
    from stepdpo.sampling import StepSampler
    from stepdpo.tasks.arith import STEP_FORMAT

    model.eval()
    plain = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (2,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = all(isinstance(p, DTensor) for p in model.parameters())
    own = prompts[:3] if rank == 0 else prompts[3:4]

    def sample(m):
        sampler = StepSampler(m, tok, STEP_FORMAT, max_new_tokens=12, temperature=0.0, batch_size=1,
                              synced_gpus=False)
        return sampler.sample_solutions(own, k=1, max_steps=3), sampler.num_generate_calls

    with dist.fsdp2_unsharded(model, reshard_after_forward=True):
        inside = not any(isinstance(p, DTensor) for p in model.parameters())
        samples, calls = sample(model)
    expected, _ = sample(plain)
    ids = tok(prompts[0], return_tensors="pt").input_ids
    with torch.no_grad():  # after the block: sharded again, and a forward (collective per block) gives the same logits
        diff = (model(ids).logits - plain(ids).logits).abs().max().item()
    result = {"rank": rank, "sharded_before": sharded, "unsharded_inside": inside, "generate_calls": calls,
              "samples": samples, "plain_samples": expected, "sharded_after": all(isinstance(p, DTensor)
                                                                                  for p in model.parameters()),
              "logits_diff_after": diff}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
