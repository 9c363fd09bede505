"""``StepwiseDPOTrainer``: TRL's ``DPOTrainer`` trained on step pairs.

What changes relative to ``trl.DPOTrainer`` (everything else - every ``loss_type``, LoRA with
the reference = adapter disabled, ``precompute_ref_log_probs``, gradient accumulation,
checkpoints - is TRL's own code path):

* **Piecewise tokenization.** A pair's context is ``prompt + prefix_steps`` tokenized by the
  :class:`~reward_models.steps.StepFormat` exactly as :class:`~stepdpo.sampling.StepSampler`
  generates from it; the completions are the ids of ``step + tag + separator``; EOS is
  appended only when the pair ends the solution (``is_final``), never after a mid-solution
  step. The loss covers only the step's tokens (TRL's ``completion_mask``).
* **Pairs from prompts.** Given prompts (a dataset with only a ``prompt`` column, or
  ``prompts=``) and a ``reward_model`` (any reward model, user object with
  ``get_rewards_for_steps``, callable, or the task checker), the trainer samples and builds the
  pairs itself (:func:`~stepdpo.pairs.build_step_pairs`), optionally for several rounds with
  the current policy. Without a reward model the judge is the policy's own Yes/No verification
  prompt.
* **Outcome-level pairs too.** Whole-solution pairs (:class:`~stepdpo.pairs.OutcomePair`, or
  rows with ``chosen_steps``/``rejected_steps``) are tokenized the same piecewise way with EOS
  after finished solutions, so outcome-level DPO runs through the same trainer and arguments
  as a baseline.
* **Per-pair weights** from the reward margin (``margin_weighting``): each pair's loss is
  multiplied by its weight before the batch mean.
* ``tokenizer=`` is accepted as an alias of ``processing_class=``; a model built in memory
  gets an in-memory reference copy (TRL would try to reload it by name) unless LoRA is used,
  in which case the reference is the base model with the adapter disabled.

The pairs as a dataset (validation, weights, piecewise tokenization, collation) are in
:mod:`stepdpo.pair_data`. At ~800 lines this module is one class: its constructor, online pair
building (sharded over processes), the NLL replay, probe pairs, the loss with its extensions,
the reference cache and the rounds - the parts share the trainer's state, so they stay together.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback
from trl import DPOTrainer

from reward_models.base import as_reward_model
from reward_models.hf_internals import (
    DPOHooks,
    activation_checkpointing_off,
    copyable_fused_forward,
    use_current_checkpointing_names,
)
from reward_models.reliability import ReliableTrainerMixin
from reward_models.steps import StepFormat
from reward_models.types import DataError, StepPair
from stepdpo import distributed as dist
from stepdpo.config import StepwiseDPOConfig
from stepdpo.losses import PairLogps, dpop_penalty, get_loss, sequence_logps
from stepdpo.pair_data import (
    PAIR_FEATURES,
    TOKENIZED_COLUMNS,
    StepPreferenceCollator,
    dataset_kind,
    margin_weights,
    pairs_to_rows,
    tokenize_solution_pair,
    tokenize_step_pair,
)
from stepdpo.pairs import (
    OutcomePair,
    build_step_pairs,
    judge_threshold,
    pair_from_row,
    right_samples,
    save_pairs,
    threshold_hint,
)
from stepdpo.sampling import StepSampler, VLLMStepSampler

logger = logging.getLogger(__name__)

PAIR_LOSS_WEIGHT_WITH_REPLAY = 0.01  # the default weight of pair losses next to the NLL replay (see __init__)


def _policy_forward_hook(trainer_ref, module, args, output):
    trainer = trainer_ref()
    return None if trainer is None else trainer._on_policy_forward(module, args, output)


class NoPairsError(ValueError):
    """A round of pair building from prompts produced no pair (the stats in the message say why)."""


def _trl_version() -> str:
    import trl

    return trl.__version__


def _scale_grad(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Same value as ``x``; the gradient flowing into ``x`` is multiplied by ``scale``."""
    return x * scale + (x * (1 - scale)).detach()


class _PairStatsLogger(TrainerCallback):
    """Logs the pair statistics of the rounds built so far as training starts (the trainer is held
    weakly: the callback handler is the trainer's own)."""

    def __init__(self, trainer_ref):
        self._trainer = trainer_ref

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is not None:
            trainer._log_pair_stats()


use_current_checkpointing_names()  # TRL 1.16 reads deprecated names: a FutureWarning in every run


def default_judge(model, tokenizer, step_format: StepFormat, verification_prompt: str | None = None):
    """The policy's own Yes/No verification prompt as a process reward model (the reference API's
    "default log probability approach"), scoring P(Yes) against P(No) as a probability so
    ``score_threshold`` keeps its meaning.

    ``verification_prompt`` is a template with ``{problem}``, ``{previous_steps}`` and
    ``{step}`` fields, or a plain question that the step is appended to (the reference API); None uses
    :data:`reward_models.process.DEFAULT_STEP_TEMPLATE`.
    """
    try:
        from reward_models.process import TEMPLATE_FIELDS, ProcessRewardModel
    except ImportError as e:
        raise ImportError("no reward_model was given and the default judge (the policy's verification prompt) needs "
                          "reward_models.process.ProcessRewardModel, which could not be imported; pass "
                          "reward_model=... explicitly") from e
    kwargs: dict[str, Any] = {"backend": "verification", "step_format": step_format, "output": "prob"}
    if verification_prompt:
        has_fields = any("{" + f + "}" in verification_prompt for f in TEMPLATE_FIELDS)
        kwargs["prompt_template"] = verification_prompt if has_fields else verification_prompt + "{step}"
    return ProcessRewardModel.from_model(model, tokenizer, **kwargs)


class StepwiseDPOTrainer(ReliableTrainerMixin, DPOHooks, DPOTrainer):
    """Stepwise DPO on TRL (see the module docstring).

    Args:
        model: policy (a model or a path/name TRL can load).
        ref_model: optional frozen reference. Default: the adapter disabled with LoRA, else an
            in-memory copy of ``model`` (none at all with ``precompute_ref_log_probs``).
        args: a :class:`~stepdpo.config.StepwiseDPOConfig`.
        train_dataset: step pairs (``StepPair`` objects, dicts or a ``Dataset`` with ``prompt``,
            ``prefix_steps``, ``chosen``, ``rejected`` [, ``is_final``, ``weight``, scores] or the
            Step-DPO columns), pre-tokenized ``prompt_ids``/``chosen_ids``/``rejected_ids``, a
            dataset of prompts only (pairs are then built), or any ordinary TRL DPO dataset.
        processing_class / tokenizer: the tokenizer (``tokenizer`` is an alias).
        reward_model: judge for building pairs from prompts (anything
            :func:`~reward_models.base.as_reward_model` accepts).
        prompts: prompts to build pairs from (instead of ``train_dataset``).
        answers, answer_checker: optional; chosen steps should roll out to the right answer
            (``chosen_rule``) and only wrong solutions are searched for errors.
        probe_dataset: fixed step pairs whose log-probs are logged (``probe_pairs`` of them;
            default: the first pairs of the training set).
        replay_dataset: solutions (``StepSample`` objects or dicts with ``prompt`` and ``steps``)
            whose NLL, weighted by ``replay_weight``, is added to every training batch.
        peft_config: a ``peft.LoraConfig`` etc. (reference = adapter disabled).
    """

    _tag_names = ["trl", "dpo", "stepwise-dpo"]
    extra_signature_columns = ("pair_weight",)  # the per-pair weights reach compute_loss
    _name = "Stepwise DPO"

    def __init__(self, model, ref_model=None, args: StepwiseDPOConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None, *, tokenizer=None,
                 reward_model=None, prompts: Sequence[str] | None = None, answers: Sequence[Any] | None = None,
                 answer_checker=None, probe_dataset: Sequence[StepPair] | None = None, replay_dataset=None):
        if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
            raise ValueError("pass the tokenizer as processing_class= or tokenizer=, not two different objects")
        processing_class = processing_class if processing_class is not None else tokenizer
        if args is None:
            args = StepwiseDPOConfig(output_dir="stepwise-dpo", report_to=[])
        if not isinstance(args, StepwiseDPOConfig):
            raise TypeError(f"args must be a StepwiseDPOConfig, got {type(args).__name__}: build one with the same "
                            "fields (it subclasses trl.DPOConfig)")
        self.step_format = args.step_format
        self.pair_stats: list[dict[str, Any]] = []
        self._pair_stats_logged = 0  # how many of pair_stats are in the log (see _log_pair_stats)
        self.shard_log: list[dict[str, Any]] = []  # per round: the prompts this process sampled, its generate calls
        self._round_replay: list = []
        self._answers, self._answer_checker = answers, answer_checker
        self._reward_model_arg = reward_model

        if prompts is not None:
            if train_dataset is not None:
                raise ValueError("pass either prompts= or train_dataset=, not both")
            train_dataset = Dataset.from_dict({"prompt": list(prompts)})
        if train_dataset is None:
            raise ValueError("train_dataset (step pairs or prompts) or prompts= is required")

        def to_rows(data, source):
            return Dataset.from_list(pairs_to_rows(data, args.margin_weighting, args.margin_weight_scale, source,
                                                   args.step_format), features=PAIR_FEATURES)

        if isinstance(eval_dataset, (list, tuple)):
            eval_dataset = to_rows(list(eval_dataset), "eval_dataset")
        if isinstance(train_dataset, (list, tuple)):
            if not train_dataset:
                raise ValueError("train_dataset is empty")
            items = list(train_dataset)
            if all(isinstance(p, str) for p in items):
                train_dataset = Dataset.from_dict({"prompt": items})
            elif all(isinstance(p, OutcomePair) for p in items):
                train_dataset = Dataset.from_list([p.to_dict() for p in items])
            elif all(isinstance(p, dict) for p in items) and dataset_kind(items) != "pairs":
                train_dataset = Dataset.from_list(items)
            else:
                train_dataset = to_rows(items, "train_dataset")
        kind = dataset_kind(train_dataset)
        if kind == "pairs" and not isinstance(train_dataset, Dataset):
            raise TypeError("step pairs must be given as a list or a datasets.Dataset")
        if kind == "pairs" and "pair_weight" not in train_dataset.column_names:
            train_dataset = to_rows(train_dataset.to_list(), "train_dataset")

        self._pair_prompts: list[str] | None = None
        if kind == "prompts":
            self._pair_prompts = list(train_dataset["prompt"])
            if isinstance(model, str):
                from transformers import AutoModelForCausalLM

                from reward_models.hf_utils import safe_from_pretrained

                init = dict(args.model_init_kwargs or {})
                init.setdefault("trust_remote_code", args.trust_remote_code)
                model = safe_from_pretrained(AutoModelForCausalLM, model, **init)
            if processing_class is None:
                from transformers import AutoTokenizer

                processing_class = AutoTokenizer.from_pretrained(model.config.name_or_path,
                                                                 trust_remote_code=args.trust_remote_code)
            # round 0's pairs are built below, once TRL/transformers have placed the policy on its device
        elif args.rounds > 1:
            raise ValueError("rounds > 1 needs prompts to regenerate pairs from (a dataset with only a 'prompt' "
                             "column, or prompts=)")

        # An in-memory reference copy: TRL would reload the reference from model.name_or_path, which fails for a
        # model built from a config. With LoRA the reference is the adapter disabled: no copy.
        from peft import PeftModel

        is_peft = peft_config is not None or isinstance(model, PeftModel)
        needs_ref = not args.precompute_ref_log_probs or args.rounds > 1
        if ref_model is None and not is_peft and not isinstance(model, str) and needs_ref:
            ref_model = copy.deepcopy(model)
            ref_model.requires_grad_(False)
            ref_model.eval()

        if data_collator is None and processing_class is not None:
            tok = getattr(processing_class, "tokenizer", processing_class)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            if args.pad_token is not None:
                pad = tok.convert_tokens_to_ids(args.pad_token)
            data_collator = StepPreferenceCollator(pad_token_id=pad, max_length=args.max_length,
                                                   truncation_mode=args.truncation_mode,
                                                   pad_to_multiple_of=args.pad_to_multiple_of)

        super().__init__(model=model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
                         quantization_config=quantization_config, peft_config=peft_config)
        policy = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        for patched in (policy, self.ref_model):  # a deep copy (a next round's reference) runs its own weights
            if patched is not None:
                copyable_fused_forward(patched)
        self._pair_weights: torch.Tensor | None = None
        self._weights_applied = False
        self._captured: list[torch.Tensor] | None = None
        if self._pair_prompts is not None:
            self.add_callback(_PairStatsLogger(weakref.ref(self)))
            train_dataset = self._build_round(0)
        self._probe = self._probe_set(probe_dataset, train_dataset, args)
        self._replay, replaying = None, False
        if args.replay_weight and args.replay_source == "round_samples":
            if self._pair_prompts is None:
                logger.warning("replay_weight=%g with replay_source='round_samples' replays the right solutions sampled "
                               "while building pairs from prompts; training on given pairs, there are none: no replay "
                               "(pass replay_source='dataset' and replay_dataset= to replay your own data)",
                               args.replay_weight)
            else:
                replaying = True
                if self._round_replay:
                    self._replay = self._replay_batches(self._round_replay, processing_class, args)
        elif args.replay_weight:
            self._replay, replaying = self._replay_batches(replay_dataset, processing_class, args), True
        if replaying and args.loss_weights is None:
            # A pair loss sums log-probs over a completion's tokens and is averaged over pairs, the NLL replay averages
            # over tokens: per token the pair loss's gradient is ~100x larger, and clipped together the NLL would
            # vanish. Weighted PAIR_LOSS_WEIGHT_WITH_REPLAY, both count (chosen on validation problems, BENCHMARKS.md).
            self.loss_weights = [1.0 if t == "sft" else PAIR_LOSS_WEIGHT_WITH_REPLAY for t in self.loss_types]
        # the hook holds the trainer weakly: the trained model outlives its trainer, and deep-copies of it
        # (a next round's reference) must neither copy the trainer nor keep it alive
        self._forward_hook = self.model.register_forward_hook(functools.partial(_policy_forward_hook,
                                                                                weakref.ref(self)))
        # loss types registered in stepdpo.losses (e.g. "dpop") are computed here, TRL's own ones by TRL
        self._extension_losses = [(name, float(w)) for name, w in zip(self.loss_types, self.loss_weights)
                                  if get_loss(name) is not None]
        keep = [i for i, name in enumerate(self.loss_types) if get_loss(name) is None]
        self.loss_types = [self.loss_types[i] for i in keep]
        self.loss_weights = [self.loss_weights[i] for i in keep]

    # -- pair building ------------------------------------------------------------------------------
    def _judge(self, model, tokenizer, args):
        if args.judge == "self_verification" or self._reward_model_arg is None:
            return default_judge(model, tokenizer, args.step_format, args.verification_prompt)
        return as_reward_model(self._reward_model_arg)

    @contextlib.contextmanager
    def _generation_model(self):
        """The policy as pair building uses it: unwrapped, on this process's device, with every
        parameter present, so that sampling and judging make no collective call and each
        process can make as many ``generate`` calls as its shard needs.

        * DDP / one device: the unwrapped module (the Trainer placed it on its device).
        * DeepSpeed: ZeRO-3 parameters are gathered for the block, engine hooks removed (TRL's
          ``unwrap_model_for_generation``, as in its GRPO and online-DPO trainers); before the
          engine exists (round 0) a policy still on the CPU (ZeRO-1/2, or ZeRO-3 without
          ``zero3_init_flag``) is first moved to the process's GPU, where DeepSpeed puts it anyway.
        * FSDP 2: every sharded module is unsharded once for the block (one all-gather, on every
          process together) and kept unsharded across forwards (``set_reshard_after_forward(False)``),
          so no forward inside makes a collective; resharded and set back afterwards
          (:func:`stepdpo.distributed.fsdp2_unsharded`). Round 0 comes before ``train()`` shards
          the model: the whole policy is moved to the process's GPU first, as under DeepSpeed.
        * FSDP 1: refused (its wrapped layers gather their shards in every forward, and it has no
          public switch to keep them gathered: a collective per call).
        """
        from trl.distributed import DistributedBackend
        from trl.models.utils import unwrap_model_for_generation

        backend = DistributedBackend(self.accelerator)
        if backend.is_fsdp and backend.fsdp_version != 2:
            raise NotImplementedError(
                "building pairs from prompts under FSDP version 1 is not supported: its wrapped layers gather their "
                "shards in every forward pass, a collective that needs every process to generate in lockstep. Set "
                "fsdp_version: 2 (as configs/accelerate/fsdp.yaml does), or build the pairs with `stepdpo build-pairs` "
                "and train on the pairs file, or build them online under DDP or DeepSpeed ZeRO-2/3")
        model = self.accelerator.unwrap_model(self.model)
        device = self.accelerator.device
        params = list(model.parameters())
        if backend.is_fsdp and any(dist.gather_object(any(p.is_meta for p in params))):
            # round 0 comes before train() shards the model; with fsdp_cpu_ram_efficient_loading only the main
            # process has loaded the weights by then
            raise ValueError(
                "building pairs from prompts under FSDP: round 0 is sampled before the Trainer shards the model, and "
                "some processes hold no weights yet (fsdp_cpu_ram_efficient_loading: true loads them on the main "
                "process only). Set fsdp_cpu_ram_efficient_loading: false (as configs/accelerate/fsdp.yaml does), or "
                "build the pairs with `stepdpo build-pairs` and train on the pairs file")
        if ((self.is_deepspeed_enabled or backend.is_fsdp) and device.type != "cpu" and params
                and params[0].device.type == "cpu"
                and not hasattr(params[0], "ds_id") and not getattr(model, "is_loaded_in_4bit", False)
                and not getattr(model, "is_loaded_in_8bit", False)):
            model.to(device)
        # activation checkpointing off while sampling (it would turn the KV cache off), as TRL's helper does, but
        # through transformers' current names (see activation_checkpointing_off); TRL's helper is needed to gather
        # ZeRO-3 parameters only: elsewhere it yields the same unwrapped model
        with activation_checkpointing_off(model, getattr(self.args, "activation_checkpointing_kwargs",
                                                         self.args.gradient_checkpointing_kwargs)):
            if backend.is_zero3:
                with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                                 gather_deepspeed3_params=True) as m:
                    yield m
            elif backend.is_fsdp:
                plugin = self.accelerator.state.fsdp_plugin
                with dist.fsdp2_unsharded(self.model_wrapped, getattr(plugin, "reshard_after_forward", True)):
                    yield model
            else:
                yield model

    def _vllm_engine(self, model, tokenizer):
        """This process's colocated vLLM engine (TRL's ``VLLMGeneration``, built on first use),
        holding the policy's current weights (pushed before every round, LoRA merged)."""
        if getattr(self, "_vllm", None) is None:
            try:
                from trl.generation.vllm_generation import VLLMGeneration
                from trl.import_utils import is_vllm_available
            except ImportError as e:
                raise ImportError(f"use_vllm needs TRL's vLLM support, which could not be imported ({e})") from e
            if not is_vllm_available():
                raise ImportError("use_vllm: true needs vLLM (`pip install vllm`, on a CUDA machine); without it, "
                                  "set use_vllm: false to sample with transformers' generate")
            self._vllm = VLLMGeneration(model, self.accelerator, tokenizer, mode="colocate",
                                        gpu_memory_utilization=self.args.vllm_gpu_memory_utilization,
                                        tensor_parallel_size=1, trust_remote_code=self.args.trust_remote_code)
        self._vllm.sync_weights()
        return self._vllm.llm

    def _build_round(self, round_index: int) -> Dataset:
        """Build, tokenize (and, with ``precompute_ref_log_probs``, score with the reference) one
        round's pairs; they become ``self.train_dataset``."""
        with self._generation_model() as model:
            ds = self._build_pair_dataset(model, self.processing_class, self.args, round_index)
        name = "train" if round_index == 0 else f"train_round{round_index}"
        ds = self.prepare_dataset_as_trl_does(ds, name)
        if self.precompute_ref_logps:
            ds = self.precompute_reference_as_trl_does(ds, name, self.args.precompute_ref_batch_size
                                                       or self.args.per_device_train_batch_size)
        self.train_dataset = ds
        return ds

    def _build_pair_dataset(self, model, tokenizer, args: StepwiseDPOConfig, round_index: int) -> Dataset:
        """Pairs from this process's shard of the prompts, gathered from every process in
        process order (the same dataset on each), checked by hash."""
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        prompts, answers = self._pair_prompts, self._answers
        if round_index == 0:
            dist.check_same([prompts, None if answers is None else [repr(a) for a in answers]],
                            "prompts and answers to build pairs from",
                            "Give every process the same prompts= (and answers=); the trainer shards them itself.")
        start, stop, _ = dist.shard_bounds(len(prompts), self.accelerator.num_processes, self.accelerator.process_index)
        own = prompts[start:stop]  # every process makes the generate calls its own prompts need (full weights)
        own_answers = None if answers is None else list(answers[start:stop])
        synced = False if self.accelerator.num_processes > 1 else None

        llm = self._vllm_engine(model, tok) if args.use_vllm else None

        def sampler_at(temperature, seed):
            if llm is not None:
                return VLLMStepSampler(llm, tok, args.step_format, max_new_tokens=args.sample_max_new_tokens,
                                       temperature=temperature, top_p=args.sample_top_p, seed=seed)
            return StepSampler(model, tok, args.step_format, max_new_tokens=args.sample_max_new_tokens,
                               temperature=temperature, top_p=args.sample_top_p, batch_size=args.sample_batch_size,
                               seed=seed, synced_gpus=synced)

        sampler = sampler_at(args.sample_temperature, args.seed + 7919 * round_index)
        options = args.error_pair_options() if args.pair_strategy == "first_error" else {}
        options["rollout_sampler"] = roller = sampler_at(args.effective_rollout_temperature,
                                                         args.seed + 7919 * round_index + 104729)
        # a tqdm bar over the sampling and scoring stages, on the main process unless disable_tqdm
        options["progress"] = self.accelerator.is_main_process and not args.disable_tqdm
        logger.info("round %d: building step pairs from %d prompts (%d on this process)", round_index, len(prompts),
                    len(own))
        judge = self._judge(model, tok, args)
        threshold = judge_threshold(judge, args.score_threshold)
        start = time.perf_counter()
        if own:
            result = build_step_pairs(own, sampler, judge, strategy=args.pair_strategy,
                                      k=args.num_candidates, threshold=threshold,
                                      min_margin=args.min_pair_margin, max_steps=args.max_solution_steps,
                                      answers=own_answers, answer_checker=self._answer_checker if own_answers is not None
                                      else None, max_uncertainty=args.max_uncertainty, **options)
            local_pairs, local_stats = result.pairs, result.stats
            local_replay = right_samples(own, result.samples)
        else:
            local_pairs, local_stats, local_replay = [], {}, []
        work = {"round": round_index, "process": self.accelerator.process_index,
                "device": str(next(model.parameters()).device),
                "prompts": list(own), "generate_calls": sampler.num_generate_calls + roller.num_generate_calls,
                "generated_tokens": sampler.num_new_tokens + roller.num_new_tokens,
                "generate_seconds": round(sampler.generate_seconds + roller.generate_seconds, 4),
                "build_seconds": round(time.perf_counter() - start, 4), "sampler": type(sampler).__name__}
        self.shard_log.append(work)
        pairs = dist.gather(local_pairs)
        per_process = dist.gather_object((local_stats, work))
        stats: Counter = Counter()
        for st, _ in per_process:
            stats.update(st)  # (update keeps zero counts, unlike +)
        stats = dict(stats)
        for key in ("n_prompts", "pairs"):
            stats.setdefault(key, 0)
        stats["processes"] = self.accelerator.num_processes
        # sampling throughput: tokens of all processes, seconds of the slowest (they work side by side)
        stats["generated_tokens"] = sum(w["generated_tokens"] for _, w in per_process)
        for key in ("generate_seconds", "build_seconds"):
            stats[key] = max(w[key] for _, w in per_process)
        stats["devices"] = sorted({w["device"] for _, w in per_process})
        self.pair_stats.append({"round": round_index, **stats})
        logger.info("round %d: %s", round_index, stats)
        if not pairs:
            hint = threshold_hint(stats, threshold, judge.score_scale)
            if hint:
                logger.warning("round %d: %s", round_index, hint)
            raise NoPairsError(f"round {round_index}: no step pairs could be built from {len(prompts)} "
                               f"prompts (outcomes: {stats}); "
                               + (hint + "." if hint else "sample more candidates (num_candidates), change "
                                  "score_threshold, or check the reward model"))
        rows = pairs_to_rows(pairs, args.margin_weighting, args.margin_weight_scale)
        dist.check_same(rows, f"round {round_index} step pairs after gathering")
        if args.save_pairs_to and self.accelerator.is_main_process:
            path = Path(args.save_pairs_to)
            if args.rounds > 1:
                path = path.with_name(f"{path.stem}.round{round_index}{path.suffix or '.jsonl'}")
            save_pairs(path, pairs)
        self.last_pairs = pairs
        if args.replay_weight and args.replay_source == "round_samples":
            self._round_replay = dist.gather(local_replay)
            if not self._round_replay:
                logger.warning("round %d: no NLL replay: %s", round_index,
                               "no answers were given (answers= and answer_checker=), so no sample is known right"
                               if self._answers is None else "no sampled solution was right")
            self.pair_stats[-1]["replayed"] = len(self._round_replay)
            if hasattr(self, "_replay"):  # later rounds: replay this round's samples
                self._replay = self._replay_batches(self._round_replay, tokenizer, args) if self._round_replay \
                    else None
        return Dataset.from_list(rows, features=PAIR_FEATURES)

    def rebuild_pairs(self, round_index: int) -> Dataset:
        """Regenerate the training pairs with the current policy (used between rounds)."""
        return self._build_round(round_index)

    @property
    def applied_losses(self) -> list[tuple[str, float]]:
        """Every loss term and the weight it trains with: TRL's own, then the registered ones (e.g. DPOP)."""
        return [(n, float(w)) for n, w in zip(self.loss_types, self.loss_weights)] + list(self._extension_losses)

    def update_reference(self) -> None:
        """Make the reference a copy of the current policy (Iterative RPO: each round's reference
        is the previous round's policy). A separate reference model gets the policy's weights
        (gathered under ZeRO-3 by TRL's ``SyncRefModelCallback.sync_target_model``); with LoRA and
        no reference model, the trained adapter is copied into a frozen adapter named ``"ref"``,
        which TRL uses as the reference instead of the adapter-disabled base model."""
        from peft import PeftModel
        from trl.trainer.callbacks import SyncRefModelCallback

        policy = self.accelerator.unwrap_model(self.model)
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            SyncRefModelCallback.sync_target_model(policy, ref, 1.0)
        elif isinstance(policy, PeftModel):
            active = policy.active_adapter
            if "ref" not in policy.peft_config:
                policy.add_adapter("ref", copy.deepcopy(policy.peft_config[active]))
            params = dict(policy.named_parameters())
            with torch.no_grad():
                for name, p in params.items():
                    if f".{active}." in name:
                        target = params.get(name.replace(f".{active}.", ".ref."))
                        if target is not None:
                            target.copy_(p)
            for name, p in params.items():
                if ".ref." in name:
                    p.requires_grad_(False)
            policy.set_adapter(active)
        elif not self.precompute_ref_logps:
            raise ValueError("ref_update='previous_round' needs a reference model, LoRA, or precompute_ref_log_probs")
        logger.info("reference updated to the current policy")

    # -- NLL replay ---------------------------------------------------------------------------------
    @staticmethod
    def _replay_batches(replay_dataset, processing_class, args):
        """An endless, seeded stream of padded replay batches (None when replay is off)."""
        if args.replay_weight == 0:
            return None
        if not replay_dataset:
            raise ValueError("replay_weight > 0 needs a replay_dataset (solutions to keep likely)")
        from reward_models.types import StepSample
        from stepdpo.sft import tokenize_sft_example

        tok = getattr(processing_class, "tokenizer", processing_class)
        rows = []
        for n, ex in enumerate(replay_dataset):
            try:
                sample = ex if isinstance(ex, StepSample) else StepSample(prompt=ex["prompt"], steps=list(ex["steps"]))
            except (KeyError, TypeError) as e:
                raise DataError(f"a replay example needs 'prompt' and 'steps' ({e})", source="replay_dataset",
                                row=n) from None
            rows.append(tokenize_sft_example(tok, sample, args.step_format))
        size = args.replay_batch_size or args.per_device_train_batch_size
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        gen = torch.Generator().manual_seed(args.seed)

        def stream():
            while True:
                order = torch.randperm(len(rows), generator=gen).tolist()  # a new shuffle every pass
                for start in range(0, len(rows), size):
                    batch = [rows[i] for i in order[start:start + size]]
                    width = max(len(r["input_ids"]) for r in batch)
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    labels = torch.full((len(batch), width), -100, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for r, row in enumerate(batch):
                        n_tok = len(row["input_ids"])
                        ids[r, :n_tok] = torch.tensor(row["input_ids"])
                        mask[r, :n_tok] = 1
                        keep = torch.tensor(row["completion_mask"], dtype=torch.bool)
                        labels[r, :n_tok] = torch.where(keep, torch.tensor(row["input_ids"]), -100)
                    yield {"input_ids": ids, "attention_mask": mask, "labels": labels}

        return stream()

    def _replay_loss(self, model, mode: str):
        batch = {k: v.to(self.accelerator.device) for k, v in next(self._replay).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                                ignore_index=-100)
        self.log_metric(mode, "replay/nll", self.accelerator.gather(nll.detach()).mean().item())
        return nll

    # -- fixed probe pairs -------------------------------------------------------------------------
    @staticmethod
    def _probe_set(probe_dataset, train_dataset, args) -> list[StepPair]:
        if not args.probe_pairs:
            return []
        if probe_dataset is not None:
            rows = list(probe_dataset)
        elif {"prompt", "prefix_steps", "chosen", "rejected"} <= set(getattr(train_dataset, "column_names", None) or []):
            rows = train_dataset.select(range(min(args.probe_pairs, len(train_dataset)))).to_list()
        else:
            raise ValueError("probe_pairs needs step pairs: train on step pairs or pass probe_dataset=")
        pairs = [p if isinstance(p, StepPair) else pair_from_row({k: v for k, v in p.items()
                                                                  if k in StepPair.__dataclass_fields__})
                 for p in rows[: args.probe_pairs]]
        return pairs

    def probe_metrics(self) -> dict[str, float]:
        """Mean log-probs (per pair, summed over the step's tokens) the current policy gives the
        chosen and the rejected steps of the fixed probe pairs, and the share of pairs where it
        now prefers the chosen step."""
        if not self._probe:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        sampler = StepSampler(model, tok, self.args.step_format, batch_size=self.args.per_device_eval_batch_size)
        rows = [(p.prompt, p.prefix_steps, s, p.is_final) for p in self._probe for s in (p.chosen, p.rejected)]
        lps = sampler.step_logprobs(*map(list, zip(*rows)))
        chosen, rejected = lps[0::2], lps[1::2]
        n = len(chosen)
        return {"probe/logps_chosen": sum(chosen) / n, "probe/logps_rejected": sum(rejected) / n,
                "probe/prefers_chosen": sum(c > r for c, r in zip(chosen, rejected)) / n}

    def _log_pair_stats(self) -> None:
        """Log the statistics of the rounds built since the last call as ``pairs/...`` entries
        (``pairs/count``, ``pairs/chosen_verified``, ``pairs/skipped_all_bad``, ...; the numbers of
        :attr:`pair_stats`, identical on every process after gathering) through :meth:`log`, so
        they reach ``state.log_history`` and every ``report_to`` integration (which report from
        the main process only). Runs as training starts (:class:`_PairStatsLogger`): ``train()``
        begins with a new ``state``, so an entry logged while the pairs were built (in
        ``__init__`` or between rounds) would be lost."""
        pending, self._pair_stats_logged = self.pair_stats[self._pair_stats_logged:], len(self.pair_stats)
        for stats in pending:
            self.log({("pairs/count" if k == "pairs" else f"pairs/{k}"): v for k, v in stats.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if logs and all(k.startswith("pairs/") for k in logs):
            # pair statistics: the Trainer's own log, without TRL's, which would add (and clear) the averages of the
            # training metrics gathered for the next training log
            return Trainer.log(self, logs, start_time)
        step, every = self.state.global_step, self.args.probe_steps
        if self._probe and self.model.training and "loss" in logs and (
                not every or step % every == 0 or step >= self.state.max_steps):
            logs = {**logs, **self.probe_metrics()}
        super().log(logs, start_time)

    # -- TRL hooks ----------------------------------------------------------------------------------
    def prepare_dataset(self, dataset, processing_class, args, dataset_name, trl_prepare):
        """Tokenize step pairs piecewise (no EOS after a mid-solution step); pass pre-tokenized
        data through; hand any other dataset to TRL.

        TRL's dataset preparation (reached through :class:`reward_models.hf_internals.DPOHooks`)
        is used for ordinary DPO data only: its own tokenization appends EOS to every
        completion and tokenizes prompt+completion jointly, both wrong for steps.
        """
        kind = dataset_kind(dataset)
        if kind == "trl":
            return trl_prepare(dataset, processing_class, args, dataset_name)
        if kind == "prompts":
            if dataset_name == "train" and self._pair_prompts is not None:
                return dataset  # pairs are built from these prompts once the policy is on its device
            raise ValueError(f"{dataset_name} dataset holds prompts only; pairs are built from prompts for the train "
                             "dataset only - pass step pairs for evaluation")
        if kind == "pairs":
            if "pair_weight" not in dataset.column_names:
                dataset = Dataset.from_list(pairs_to_rows(dataset.to_list(), args.margin_weighting,
                                                          args.margin_weight_scale, dataset_name, args.step_format),
                                            features=PAIR_FEATURES)
            tok = getattr(processing_class, "tokenizer", processing_class)
            fmt = args.step_format

            def tokenize(example):
                return tokenize_step_pair(tok, fmt, example["prompt"], example["prefix_steps"], example["chosen"],
                                          example["rejected"], bool(example["is_final"]))

            dataset = dataset.map(tokenize, desc=f"Tokenizing {dataset_name} step pairs piecewise")
        if kind == "solutions":
            tok = getattr(processing_class, "tokenizer", processing_class)
            fmt = args.step_format

            def tokenize_solutions(example, idx):
                try:
                    return tokenize_solution_pair(tok, fmt, example["prompt"], example["chosen_steps"],
                                                  example["rejected_steps"], bool(example.get("chosen_finished", True)),
                                                  bool(example.get("rejected_finished", True)))
                except DataError as e:
                    raise e.at(source=dataset_name, row=idx) from None

            dataset = dataset.map(tokenize_solutions, with_indices=True,
                                  desc=f"Tokenizing {dataset_name} outcome pairs piecewise")
        return self._apply_length_policy(dataset, args, dataset_name)

    def _apply_length_policy(self, dataset, args, dataset_name):
        """Never train on a cut step: with ``keep_start`` (the default) a pair whose context plus
        longer step exceeds ``max_length`` is dropped; with ``keep_end`` TRL cuts the context
        from the left (the user's explicit choice). Both are counted in ``truncation_stats``
        (see :mod:`reward_models.truncation`)."""
        stats = {"pairs": len(dataset), "pairs_dropped_too_long": 0, "pairs_context_cut": 0}
        if args.max_length is not None and len(dataset):
            def longest(ex):
                return len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))

            if args.truncation_mode == "keep_start":
                n = len(dataset)
                dataset = dataset.filter(lambda ex: longest(ex) <= args.max_length)
                stats["pairs_dropped_too_long"] = n - len(dataset)
                if len(dataset) < n:
                    logger.warning("%s: dropped %d of %d pairs longer than max_length=%d (context + step; a step or "
                                   "its context is never cut)", dataset_name, n - len(dataset), n, args.max_length)
                if not len(dataset):
                    raise DataError(f"all {n} pairs are longer than max_length={args.max_length}; raise max_length",
                                    source=f"{dataset_name}_dataset")
            else:
                stats["pairs_context_cut"] = sum(longest(ex) > args.max_length for ex in dataset)
                if stats["pairs_context_cut"]:
                    logger.warning("%s: %d pairs longer than max_length=%d get their context cut from the left "
                                   "(truncation_mode='keep_end')", dataset_name, stats["pairs_context_cut"],
                                   args.max_length)
        if not hasattr(self, "truncation_stats"):
            self.truncation_stats = {}
        self.truncation_stats[dataset_name] = stats
        return dataset

    def _on_policy_forward(self, module, args, output):
        """Forward hook on the policy (the trainer's one reliance on TRL's forward output: its fused
        LM head returns per-token ``log_probs``, chosen rows first, then rejected rows; pinned by
        ``tests/stepdpo/test_losses.py``).

        * Extension losses (:mod:`stepdpo.losses`, e.g. the default DPOP): keep the per-token
          log-probs, which :meth:`compute_loss` turns into sequence log-probs and per-pair losses,
          weighted there.
        * Pair weights for TRL's own loss types, which average over pairs inside TRL: scale the
          gradient of pair i's log-probs (chosen row i, rejected row B+i) by its weight. Each
          pair's loss depends only on its own rows, so the gradient is exactly that of
          ``mean_i(w_i * loss_i)`` (TRL's logged value stays the unweighted mean).
        """
        lp = getattr(output, "log_probs", None)
        if lp is None:
            return None
        if self._captured is not None:
            self._captured.append(lp)
        w = self._pair_weights
        if w is not None and self.loss_types and torch.is_grad_enabled() and lp.requires_grad:
            full = torch.cat([w, w]).to(device=lp.device, dtype=lp.dtype)
            if full.shape[0] != lp.shape[0]:
                raise RuntimeError(f"pair weights for {w.shape[0]} pairs do not match a batch of {lp.shape[0]} rows")
            output.log_probs = _scale_grad(lp, full.view(-1, *([1] * (lp.dim() - 1))))
            self._weights_applied = True
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("pair_weight", None)
        mode = "train" if self.model.training else "eval"
        weighted = weights is not None and not torch.all(weights == 1)
        if weighted:
            self._pair_weights = weights
            self.log_metric(mode, "pair_weight", weights.float().mean().item())
        self._weights_applied = False
        try:
            if not self._extension_losses:
                out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                           num_items_in_batch=num_items_in_batch)
            else:
                out = self._compute_with_extension_losses(model, inputs, return_outputs, num_items_in_batch, mode)
            if weighted and self.loss_types and torch.is_grad_enabled() and not self._weights_applied:
                raise RuntimeError(
                    "per-pair weights were set but not applied: TRL's forward pass returned no per-token log_probs "
                    f"for the trainer's hook (TRL {_trl_version()}; this trainer was written against TRL 1.16). Use "
                    "margin_weighting='none', a registered loss (e.g. loss_type=['dpop']), or the TRL version in "
                    "pyproject.toml")
            if self._replay is not None and mode == "train":
                self._pair_weights = self._captured = None  # the replay forward is not a pair batch
                extra = self.args.replay_weight * self._replay_loss(model, mode)
                out = (out[0] + extra, out[1]) if return_outputs else out + extra
            return out
        finally:
            self._pair_weights = None
            self._captured = None

    def _compute_with_extension_losses(self, model, inputs, return_outputs, num_items_in_batch, mode):
        """TRL's loss for its own loss types, plus the registered ones (:mod:`stepdpo.losses`).

        The reference log-probs are computed first with TRL's ``compute_ref_log_probs`` (the
        reference model, or the policy with its LoRA adapter disabled; ``ld_alpha`` applied) unless
        they were precomputed, and handed to TRL as precomputed columns, so the reference runs once.
        The policy's log-probs come from TRL's own forward pass (captured by the forward hook).
        This is the one place that relies on TRL internals beyond its hooks; ``tests/stepdpo/
        test_losses.py`` pins it (DPOP with lambda 0 equals TRL's sigmoid loss, value and gradient).
        """
        mask = inputs["completion_mask"][..., 1:]
        if self.precompute_ref_logps:
            ref_c, ref_r = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            loss = self._trl_loss_capturing(model, inputs, return_outputs, num_items_in_batch)
        else:
            ref = self.ref_model if self.ref_model is not None else self.model
            ref_c, ref_r = self.compute_ref_log_probs(ref, inputs)
            self.precompute_ref_logps = True  # TRL reads the reference log-probs from the batch: no second pass
            try:
                loss = self._trl_loss_capturing(model, {**inputs, "ref_chosen_logps": ref_c,
                                                        "ref_rejected_logps": ref_r},
                                                return_outputs, num_items_in_batch)
            finally:
                self.precompute_ref_logps = False
        outputs = None
        if return_outputs:
            loss, outputs = loss
        if not self._captured:
            raise RuntimeError("the policy's forward pass was not seen by the trainer's forward hook; extension "
                               "losses cannot be computed (was the model replaced after the trainer was built?)")
        per_token = self._captured[0][:, -mask.size(1):]
        chosen, rejected = sequence_logps(per_token, mask, self.ld_alpha)
        lp = PairLogps(chosen, rejected, ref_c.to(chosen.device, chosen.dtype).detach(),
                       ref_r.to(chosen.device, chosen.dtype).detach())
        total = loss
        w = self._pair_weights
        for name, weight in self._extension_losses:
            per_pair = get_loss(name)(lp, self.args)
            if per_pair.shape != chosen.shape:
                raise ValueError(f"loss {name!r} returned shape {tuple(per_pair.shape)}; expected one value per pair "
                                 f"{tuple(chosen.shape)}")
            if w is not None:  # per-pair weights, in the loss: mean_i(w_i * loss_i)
                per_pair = per_pair * w.to(per_pair.device, per_pair.dtype)
            total = total + weight * per_pair.mean()
            self.log_metric(mode, f"{name}/loss", self.accelerator.gather(per_pair.detach()).mean().item())
        penalty = dpop_penalty(lp).detach()
        self.log_metric(mode, "logps/chosen_below_ref", self.accelerator.gather(penalty).mean().item())
        return (total, outputs) if return_outputs else total

    def _trl_loss_capturing(self, model, inputs, return_outputs, num_items_in_batch):
        self._captured = []
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def precompute_reference(self, dataset, name, batch_size, trl_precompute):
        """TRL's precompute, plus a persistent cache in ``output_dir/ref_logps_cache/`` keyed by
        the tokenized pairs and the reference model's weights (safetensors, never pickle).

        TRL caches next to the dataset's Arrow files, which in-memory datasets (all built pairs)
        do not have; this wraps the private TRL step (calling it, not copying it) for that reason.
        With several processes, the main process's cache key and its hit-or-miss decision are
        used by all (ZeRO-3 shards make each process's model hash differ, and a file written
        meanwhile must not send one process down a different path), and the dataset is first
        written to a folder every process can read, so that TRL's Arrow cache lands there instead
        of in each process's own temporary folder.
        """
        from safetensors.torch import load_file, save_file

        if dataset_kind(dataset) == "prompts":
            return dataset  # round 0's pairs are built (and precomputed) once the policy is on its device
        for col in ("ref_chosen_logps", "ref_rejected_logps"):
            if col in dataset.column_names:
                dataset = dataset.remove_columns(col)
        rows = hashlib.sha256()
        for row in dataset.select_columns(list(TOKENIZED_COLUMNS)).to_list():
            rows.update(json.dumps([row[c] for c in TOKENIZED_COLUMNS]).encode())
        # this runs while the trainer is built, before train()'s own check: different pairs on different processes
        # would get the main process's cached log-probs (its key and hit are broadcast below)
        dist.check_same(rows.hexdigest(), f"{name} step pairs (tokenized)",
                        fix="Give every process the same pairs: the same file, dataset options and seed.")
        h = hashlib.sha256()
        h.update(json.dumps([str(self.reference_model_hash), self.ld_alpha, self.args.max_length,
                             self.args.truncation_mode, rows.hexdigest()]).encode())
        key = dist.broadcast(h.hexdigest()[:24])
        cache = Path(self.args.output_dir) / "ref_logps_cache"
        path = cache / f"{name}-{key}.safetensors"
        t = load_file(str(path)) if self.accelerator.is_main_process and path.exists() else None
        if dist.broadcast(t is not None and len(t["ref_chosen_logps"]) == len(dataset)):
            t = t if t is not None else load_file(str(path))
            logger.info("loaded reference log-probs for %s from %s", name, path)
            self.ref_logps_cache_hit = True
            dataset = dataset.add_column("ref_chosen_logps", t["ref_chosen_logps"].tolist())
            return dataset.add_column("ref_rejected_logps", t["ref_rejected_logps"].tolist())
        if self.accelerator.num_processes > 1 and not dataset.cache_files:
            from datasets import load_from_disk

            shared = cache / f"{name}-{key}-pairs"
            if self.accelerator.is_main_process:
                dataset.save_to_disk(str(shared))
            self.accelerator.wait_for_everyone()
            dataset = load_from_disk(str(shared))
        out = trl_precompute(dataset, name, batch_size)
        self.ref_logps_cache_hit = False
        if self.accelerator.is_main_process:
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            save_file({c: torch.tensor(out[c], dtype=torch.float32) for c in ("ref_chosen_logps", "ref_rejected_logps")},
                      tmp)
            os.replace(tmp, path)
        self.accelerator.wait_for_everyone()
        return out

    # -- iterative rounds ---------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Train; with ``rounds > 1`` (and prompts), regenerate pairs with the current policy
        before each later round. Each round restarts the optimizer and learning-rate schedule and
        saves its checkpoints in its own folder, ``output_dir/round-<r>/checkpoint-<step>``.

        With several processes, every process must hold the same training pairs (each trains on
        its slice of every batch): they are compared by hash first, and a difference is a
        :class:`~stepdpo.distributed.RankMismatchError` on every process, not a hang."""
        if self.args.rounds <= 1 or self._pair_prompts is None:
            self._check_same_train_dataset()
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        if resume_from_checkpoint:
            raise ValueError("resume_from_checkpoint is supported with rounds=1 only")
        original_max_steps, output_dir = self.args.max_steps, self.args.output_dir
        out = None
        try:
            for r in range(self.args.rounds):
                if r > 0:
                    if self.args.ref_update == "previous_round":
                        self.update_reference()
                    self.rebuild_pairs(r)
                    self.optimizer, self.lr_scheduler = None, None
                if self.args.regenerate_every_steps:
                    self.args.max_steps = self.args.regenerate_every_steps
                self._check_same_train_dataset()
                self.args.output_dir = os.path.join(output_dir, f"round-{r}")  # the step counter restarts each round
                try:
                    out = super().train(trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
                finally:
                    self.args.output_dir = output_dir
        finally:
            self.args.max_steps = original_max_steps
        return out

    def _check_same_train_dataset(self) -> None:
        if self.accelerator.num_processes <= 1 or self.train_dataset is None:
            return
        cols = [c for c in TOKENIZED_COLUMNS if c in self.train_dataset.column_names]
        rows = self.train_dataset.select_columns(cols).to_list() if cols else self.train_dataset.to_list()
        dist.check_same(rows, "training pairs",
                        "Load the same pairs on every process (the Trainer gives each process its slice of every "
                        "batch); to build pairs per process, pass prompts= and the trainer shards them.")


__all__ = ["NoPairsError", "PAIR_FEATURES", "StepPreferenceCollator", "StepwiseDPOTrainer", "default_judge", "margin_weights",
           "pairs_to_rows", "tokenize_solution_pair", "tokenize_step_pair"]
