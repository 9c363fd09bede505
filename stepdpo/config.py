"""``StepwiseDPOConfig``: ``trl.DPOConfig`` plus only the stepwise fields.

>>> cfg = StepwiseDPOConfig(output_dir="/tmp/sdpo", step_separator="\\n", pair_strategy="per_depth", report_to=[])
>>> cfg.step_format.separator, cfg.loss_type, cfg.sample_temperature
('\\n', ['dpop'], 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig

from reward_models.steps import StepFormat
from stepdpo.pairs import CHOSEN_RULES

PAIR_STRATEGIES = ("first_error", "per_depth")
MARGIN_WEIGHTINGS = ("none", "margin", "sigmoid")
JUDGES = ("reward_model", "self_verification")
REF_UPDATES = ("previous_round", "initial")
REPLAY_SOURCES = ("round_samples", "dataset")


@dataclass
class StepwiseDPOConfig(DPOConfig):
    """Configuration of :class:`~stepdpo.trainer.StepwiseDPOTrainer` (all ``DPOConfig`` fields too)."""

    loss_type: list[str] = field(default_factory=lambda: ["dpop"], metadata={
        "help": "Preference loss(es): 'dpop' (DPO-Positive, the default: the chosen step may not fall below the "
                "reference), any TRL loss type ('sigmoid', 'sft', 'apo_zero', 'nca_pair', ...), or a name registered "
                "with stepdpo.losses.register_loss; several are summed with loss_weights."})
    step_separator: str = field(default="\n", metadata={"help": "Text that ends every step (the generation stop "
                                                                "string and the split point of solutions)."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag after each step, before the "
                                                                 "separator (e.g. ' ки')."})
    pair_strategy: str = field(default="first_error", metadata={
        "help": "How pairs are built from prompts: 'first_error' (Step-DPO: resample from the last good prefix) or "
                "'per_depth' (best vs worst of K candidates at each depth)."})
    num_candidates: int = field(default=4, metadata={"help": "K: solutions per prompt and candidate steps per group."})
    score_threshold: float = field(default=0.5, metadata={
        "help": "A step is good when its reward is at least this probability (a judge scoring log-odds, such as a "
                "plain model folder's Yes/No verification, compares with log(t/(1-t))); chosen steps must reach it, "
                "rejected must not."})
    min_pair_margin: float = field(default=0.0, metadata={
        "help": "Smallest chosen-minus-rejected reward that makes a pair (smaller differences are ties)."})
    max_uncertainty: float | None = field(default=None, metadata={
        "help": "Drop pairs whose ensemble disagreement (std) exceeds this (needs an ensemble reward model)."})
    max_solution_steps: int = field(default=8, metadata={"help": "Step limit of sampled solutions."})
    margin_weighting: str = field(default="none", metadata={
        "help": "Per-pair loss weights from the reward margin: 'none', 'margin' (proportional to the margin) or "
                "'sigmoid' (sigmoid(margin_weight_scale * margin)); normalized to mean 1 over the dataset."})
    margin_weight_scale: float = field(default=1.0, metadata={"help": "Scale of the margin in 'sigmoid' weighting."})
    rounds: int = field(default=1, metadata={
        "help": "Iterative rounds when training from prompts: each round rebuilds the pairs with the current policy, "
                "then trains (num_train_epochs, or regenerate_every_steps steps)."})
    regenerate_every_steps: int | None = field(default=None, metadata={
        "help": "With rounds > 1: train this many optimizer steps per round before regenerating pairs."})
    sample_max_new_tokens: int = field(default=64, metadata={"help": "Token limit of one sampled step."})
    sample_temperature: float = field(default=0.0, metadata={
        "help": "Temperature of the solutions searched for errors (0 = greedy: the errors the policy actually makes; "
                "measured best, see BENCHMARKS.md). Candidate steps and rollouts use rollout_temperature."})
    sample_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling for pair building."})
    sample_batch_size: int = field(default=64, metadata={"help": "Sequences per generate call when sampling."})
    judge: str = field(default="reward_model", metadata={
        "help": "Who scores steps when building pairs: 'reward_model' (the reward_model passed to the trainer; the "
                "policy's own verification prompt when none is given) or 'self_verification' (always the policy)."})
    verification_prompt: str | None = field(default=None, metadata={
        "help": "Prompt of the self-verification judge: a template with {problem}, {previous_steps} and {step}, or a "
                "question the step is appended to (the reference API: 'Is this step correct? Yes or No: '). Default: the "
                "problem, the steps so far ending with the step judged, then 'Is this step correct? Yes or No:'."})
    num_solutions: int | None = field(default=None, metadata={
        "help": "First-error strategy: solutions sampled per prompt to find errors in (default: num_candidates; "
                "1 when sample_temperature is 0, i.e. the greedy policy's own solution)."})
    num_continuations: int | None = field(default=8, metadata={
        "help": "First-error strategy: continuations sampled from each error's correct prefix; their first steps "
                "are the chosen candidates (None: num_candidates; Step-DPO samples 20 at T=0.8)."})
    rollout_temperature: float | None = field(default=0.8, metadata={
        "help": "Temperature of those continuations and of per_depth candidates (None: sample_temperature, or 0.8 "
                "when that is 0)."})
    chosen_rule: str = field(default="prefer_verified", metadata={
        "help": "Which candidate becomes the chosen step when answers are known: 'verified' (its rollout reaches "
                "the right answer, whatever the judge scores it), 'prefer_verified' (such a step if any, else one "
                "the judge scores good) or 'judge' (best judge score; no rollouts). Without answers it is always "
                "'judge'."})
    pairs_per_error: int = field(default=1, metadata={
        "help": "Pairs per error: one per distinct chosen step, up to this many."})
    max_pairs_per_prompt: int | None = field(default=None, metadata={"help": "Cap on the pairs of one problem."})
    skip_correct_solutions: bool = field(default=True, metadata={
        "help": "With answers, look for errors only in solutions whose final answer is wrong (Step-DPO)."})
    max_logp_gap: float | None = field(default=None, metadata={
        "help": "Drop pairs the policy already ranks right by more than this many nats (log-prob of the chosen "
                "step minus the rejected one's)."})
    min_pass_rate: float = field(default=0.0, metadata={
        "help": "With answers: skip problems whose sampled solutions are right less often than this."})
    max_pass_rate: float = field(default=1.0, metadata={
        "help": "With answers: skip problems whose sampled solutions are right more often than this (PRIME keeps "
                "0.2-0.8; needs num_solutions > 1)."})
    error_in_wrong: str = field(default="lowest", metadata={
        "help": "With answers, a wrong solution whose steps the judge all scores good: 'lowest' takes its "
                "lowest-scoring step as the error (the answer says there is one), 'skip' builds no pair from it."})
    ref_update: str = field(default="previous_round", metadata={
        "help": "With rounds > 1: the reference of each round, 'previous_round' (the policy as the round starts, "
                "as in Iterative RPO) or 'initial' (the policy before round 0)."})
    dpop_lambda: float = field(default=50.0, metadata={
        "help": "lambda of loss_type 'dpop' (DPO-Positive): margin lost per nat the chosen step falls below the "
                "reference."})
    replay_weight: float = field(default=1.0, metadata={
        "help": "Weight of an NLL term on replay examples added to every training batch (see replay_source; with "
                "'round_samples' and no answers, or on given pairs, there is nothing to replay and it is off, with a "
                "warning); 0 turns it off. While it is on and loss_weights is not given, pair losses are weighted "
                "0.01 (their per-token gradients are ~100x the NLL's). Measured (BENCHMARKS.md): NLL on the round's "
                "right solutions plus the step-level preference beats either alone."})
    replay_source: str = field(default="round_samples", metadata={
        "help": "What is replayed: 'round_samples' (the right solutions among the samples of the current round's "
                "pair building: the data rejection-sampling fine-tuning trains on; needs answers) or 'dataset' (the "
                "trainer's replay_dataset, e.g. the SFT data)."})
    replay_batch_size: int | None = field(default=None, metadata={
        "help": "Replay examples per training batch (default: per_device_train_batch_size)."})
    probe_pairs: int = field(default=0, metadata={
        "help": "Log the policy's log-probs of the chosen and rejected steps of this many fixed pairs (the first "
                "ones of the training set, or the trainer's probe_dataset) at every logging step: 'probe/...' "
                "metrics follow the same pairs through training, unlike the streaming batch averages."})
    probe_steps: int = field(default=0, metadata={
        "help": "Probe (see probe_pairs) every this many optimizer steps only, and at the last; 0: at every logging "
                "step."})
    save_pairs_to: str | None = field(default=None, metadata={
        "help": "If set, built pairs are written there as JSONL (round r goes to <stem>.round<r>.jsonl)."})
    use_vllm: bool = field(default=False, metadata={
        "help": "Sample steps for pair building with vLLM (needs `pip install vllm` and a CUDA GPU) instead of "
                "transformers' generate: each process runs a colocated engine (TRL's VLLMGeneration) that gets the "
                "policy's current weights before every round. The judge still scores with transformers."})
    vllm_mode: str = field(default="colocate", metadata={
        "help": "'colocate' (an engine inside each training process, sharing its GPU). 'server' is not supported: "
                "each process samples its own shard of the prompts, which one server client cannot do."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={
        "help": "Share of each GPU's memory the colocated vLLM engine may take (weights + KV cache)."})

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            # TRL defaults to bf16, which fails on machines without bf16 support (CPU-only ones):
            # use it where the accelerator supports it, full precision elsewhere.
            from reward_models.hf_utils import bf16_supported

            self.bf16 = bf16_supported()
        # TRL's `gradient_checkpointing` (default True) is a deprecated alias in transformers 5.2x: a FutureWarning in
        # every run unless carried over to `activation_checkpointing` first
        from reward_models.hf_utils import current_checkpointing_names

        current_checkpointing_names(self)
        super().__post_init__()
        if self.pair_strategy not in PAIR_STRATEGIES:
            raise ValueError(f"pair_strategy must be one of {PAIR_STRATEGIES}, got {self.pair_strategy!r}")
        if self.margin_weighting not in MARGIN_WEIGHTINGS:
            raise ValueError(f"margin_weighting must be one of {MARGIN_WEIGHTINGS}, got {self.margin_weighting!r}")
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {self.judge!r}")
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2 to compare steps, got {self.num_candidates}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.regenerate_every_steps is not None:
            if self.regenerate_every_steps < 1:
                raise ValueError("regenerate_every_steps must be >= 1")
            if self.rounds < 2:
                raise ValueError("regenerate_every_steps needs rounds >= 2 (it sets the length of each round)")
        if self.max_uncertainty is not None and self.max_uncertainty < 0:
            raise ValueError("max_uncertainty must be >= 0")
        if self.min_pair_margin < 0:
            raise ValueError("min_pair_margin must be >= 0")
        if self.sample_max_new_tokens < 1 or self.max_solution_steps < 1:
            raise ValueError("sample_max_new_tokens and max_solution_steps must be >= 1")
        if self.margin_weighting != "none" and {"aot", "aot_unpaired"} & set(self.loss_type):
            raise ValueError("margin_weighting cannot be used with loss_type 'aot'/'aot_unpaired': those losses sort "
                             "the pairs of a batch, so per-pair weights would be misaligned")
        if self.chosen_rule not in CHOSEN_RULES:
            raise ValueError(f"chosen_rule must be one of {CHOSEN_RULES}, got {self.chosen_rule!r}")
        if self.error_in_wrong not in ("lowest", "skip"):
            raise ValueError(f"error_in_wrong must be 'lowest' or 'skip', got {self.error_in_wrong!r}")
        if self.ref_update not in REF_UPDATES:
            raise ValueError(f"ref_update must be one of {REF_UPDATES}, got {self.ref_update!r}")
        for name in ("num_solutions", "num_continuations", "max_pairs_per_prompt"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pairs_per_error < 1:
            raise ValueError(f"pairs_per_error must be >= 1, got {self.pairs_per_error}")
        if not 0.0 <= self.min_pass_rate <= self.max_pass_rate <= 1.0:
            raise ValueError("need 0 <= min_pass_rate <= max_pass_rate <= 1")
        if self.sample_temperature < 0 or (self.rollout_temperature is not None and self.rollout_temperature < 0):
            raise ValueError("temperatures must be >= 0 (0 = greedy)")
        if self.replay_weight < 0 or (self.replay_batch_size is not None and self.replay_batch_size < 1):
            raise ValueError("replay_weight must be >= 0 and replay_batch_size >= 1")
        if self.replay_source not in REPLAY_SOURCES:
            raise ValueError(f"replay_source must be one of {REPLAY_SOURCES}, got {self.replay_source!r}")
        if self.probe_pairs < 0 or self.probe_steps < 0:
            raise ValueError("probe_pairs and probe_steps must be >= 0")
        if self.dpop_lambda < 0:
            raise ValueError("dpop_lambda must be >= 0")
        from stepdpo.losses import TRL_LOSS_TYPES, get_loss, registered_losses

        unknown = [t for t in self.loss_type if t not in TRL_LOSS_TYPES and get_loss(t) is None]
        if unknown:
            raise ValueError(f"unknown loss_type {unknown}; TRL's: {list(TRL_LOSS_TYPES)}; registered in "
                             f"stepdpo.losses: {registered_losses()}")
        if self.use_vllm and self.vllm_mode != "colocate":
            raise ValueError(f"vllm_mode must be 'colocate', got {self.vllm_mode!r}: each process samples its own "
                             "shard of the prompts, so every process needs its own engine")
        if self.use_vllm and self.max_logp_gap is not None:
            raise ValueError("max_logp_gap scores pairs with the sampler's log-probs, which the vLLM sampler does not "
                             "give: use transformers sampling (use_vllm: false) with max_logp_gap")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError("vllm_gpu_memory_utilization must be in (0, 1]")
        if self.rounds > 1 and self.sync_ref_model:
            raise ValueError("rounds > 1 with sync_ref_model is not supported")
        self.step_format  # validates separator/tag  # noqa: B018

    @property
    def step_format(self) -> StepFormat:
        return StepFormat(separator=self.step_separator, tag=self.step_tag)

    @property
    def effective_rollout_temperature(self) -> float:
        """The continuations' temperature: ``rollout_temperature``, else ``sample_temperature``, else 0.8."""
        if self.rollout_temperature is not None:
            return self.rollout_temperature
        return self.sample_temperature if self.sample_temperature > 0 else 0.8

    def error_pair_options(self) -> dict:
        """The first-error strategy's options (:class:`stepdpo.pairs.ErrorPairOptions` fields)."""
        rate = None if (self.min_pass_rate, self.max_pass_rate) == (0.0, 1.0) else (self.min_pass_rate,
                                                                                      self.max_pass_rate)
        return {"num_solutions": self.num_solutions, "num_continuations": self.num_continuations,
                "chosen_rule": self.chosen_rule, "pairs_per_error": self.pairs_per_error,
                "max_pairs_per_prompt": self.max_pairs_per_prompt,
                "skip_correct_solutions": self.skip_correct_solutions, "max_logp_gap": self.max_logp_gap,
                "pass_rate_range": rate, "error_in_wrong": self.error_in_wrong}


__all__ = ["CHOSEN_RULES", "JUDGES", "MARGIN_WEIGHTINGS", "PAIR_STRATEGIES", "REF_UPDATES", "REPLAY_SOURCES",
           "StepwiseDPOConfig"]
