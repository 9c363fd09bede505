import pytest
import torch

from reward_models.steps import StepFormat
from stepdpo.config import StepwiseDPOConfig


def make(tmp_path, **kw):
    return StepwiseDPOConfig(output_dir=str(tmp_path), report_to=[], **kw)


def test_defaults_and_step_format(tmp_path):
    cfg = make(tmp_path, step_separator="\n\n", step_tag=" ки")
    assert cfg.step_format == StepFormat(separator="\n\n", tag=" ки")
    # the default recipe (measured best, BENCHMARKS.md): greedy errors, rollouts at 0.8, DPOP, previous-round reference
    assert cfg.loss_type == ["dpop"] and cfg.pair_strategy == "first_error" and cfg.sample_temperature == 0.0
    assert (cfg.num_continuations, cfg.rollout_temperature, cfg.chosen_rule, cfg.ref_update) == \
        (8, 0.8, "prefer_verified", "previous_round")
    assert cfg.error_pair_options()["pass_rate_range"] is None
    assert cfg.bf16 == bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    for name in ("pair_strategy", "margin_weighting", "judge", "rounds", "score_threshold"):
        field = StepwiseDPOConfig.__dataclass_fields__[name]
        assert field.metadata["help"]


@pytest.mark.parametrize("kw,match", [
    (dict(pair_strategy="best"), "pair_strategy"),
    (dict(margin_weighting="linear"), "margin_weighting"),
    (dict(judge="oracle"), "judge"),
    (dict(num_candidates=1), "num_candidates"),
    (dict(rounds=0), "rounds"),
    (dict(regenerate_every_steps=5), "rounds >= 2"),
    (dict(max_uncertainty=-1.0), "max_uncertainty"),
    (dict(margin_weighting="margin", loss_type=["aot_unpaired"]), "aot"),
    (dict(step_separator=""), "separator"),
    (dict(step_separator="\n", step_tag="a\nb"), "tag"),
    (dict(chosen_rule="best"), "chosen_rule"),
    (dict(ref_update="ema"), "ref_update"),
    (dict(num_continuations=0), "num_continuations"),
    (dict(pairs_per_error=0), "pairs_per_error"),
    (dict(min_pass_rate=0.9, max_pass_rate=0.2), "pass_rate"),
    (dict(rollout_temperature=-1.0), "temperature"),
    (dict(dpop_lambda=-1.0), "dpop_lambda"),
    (dict(probe_pairs=-1), "probe_pairs"),
    (dict(loss_type=["dpop", "typo"]), "unknown loss_type"),
])
def test_bad_combinations_raise(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make(tmp_path, **kw)


def test_vllm_settings_are_checked():
    with pytest.raises(ValueError, match="colocate"):
        StepwiseDPOConfig(output_dir="/tmp/x", report_to=[], use_vllm=True, vllm_mode="server")
    with pytest.raises(ValueError, match="max_logp_gap"):
        StepwiseDPOConfig(output_dir="/tmp/x", report_to=[], use_vllm=True, max_logp_gap=1.0)
    assert StepwiseDPOConfig(output_dir="/tmp/x", report_to=[], use_vllm=True).vllm_gpu_memory_utilization == 0.3
