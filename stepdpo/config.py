"""``StepwiseDPOConfig``: ``trl.DPOConfig`` plus only the stepwise fields.

>>> cfg = StepwiseDPOConfig(output_dir="/tmp/sdpo", step_separator="\\n", pair_strategy="per_depth", report_to=[])
>>> cfg.step_format.separator, cfg.loss_type
('\\n', ['sigmoid'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig

from reward_models.steps import StepFormat

PAIR_STRATEGIES = ("first_error", "per_depth")
MARGIN_WEIGHTINGS = ("none", "margin", "sigmoid")
JUDGES = ("reward_model", "self_verification")


@dataclass
class StepwiseDPOConfig(DPOConfig):
    """Configuration of :class:`~stepdpo.trainer.StepwiseDPOTrainer` (all ``DPOConfig`` fields too)."""

    step_separator: str = field(default="\n", metadata={"help": "Text that ends every step (the generation stop "
                                                                "string and the split point of solutions)."})
    step_tag: str | None = field(default=None, metadata={"help": "Optional scoring tag after each step, before the "
                                                                 "separator (e.g. ' ки')."})
    pair_strategy: str = field(default="first_error", metadata={
        "help": "How pairs are built from prompts: 'first_error' (Step-DPO: resample from the last good prefix) or "
                "'per_depth' (best vs worst of K candidates at each depth)."})
    num_candidates: int = field(default=4, metadata={"help": "K: solutions per prompt and candidate steps per group."})
    score_threshold: float = field(default=0.5, metadata={
        "help": "A step is good when its reward is at least this; chosen steps must reach it, rejected must not."})
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
    sample_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for pair building."})
    sample_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling for pair building."})
    sample_batch_size: int = field(default=64, metadata={"help": "Sequences per generate call when sampling."})
    judge: str = field(default="reward_model", metadata={
        "help": "Who scores steps when building pairs: 'reward_model' (the reward_model passed to the trainer; the "
                "policy's own verification prompt when none is given) or 'self_verification' (always the policy)."})
    verification_prompt: str | None = field(default=None, metadata={
        "help": "Prompt of the self-verification judge: a template with {problem}, {previous_steps} and {step}, or a "
                "question the step is appended to (seed 004: 'Is this step correct? Yes or No: '). Default: the "
                "problem, the steps so far and the new step, then 'Is the new step correct? Yes or No:'."})
    save_pairs_to: str | None = field(default=None, metadata={
        "help": "If set, built pairs are written there as JSONL (round r goes to <stem>.round<r>.jsonl)."})

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            # TRL defaults to bf16, which fails on machines without bf16 support (CPU-only ones):
            # use it where the accelerator supports it, full precision elsewhere.
            import torch

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
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
        if self.rounds > 1 and self.sync_ref_model:
            raise ValueError("rounds > 1 with sync_ref_model is not supported")
        self.step_format  # validates separator/tag  # noqa: B018

    @property
    def step_format(self) -> StepFormat:
        return StepFormat(separator=self.step_separator, tag=self.step_tag)


__all__ = ["JUDGES", "MARGIN_WEIGHTINGS", "PAIR_STRATEGIES", "StepwiseDPOConfig"]
