import pytest
import torch

from reward_models.steps import StepFormat
from stepdpo.config import StepwiseDPOConfig


def make(tmp_path, **kw):
    return StepwiseDPOConfig(output_dir=str(tmp_path), report_to=[], **kw)


def test_defaults_and_step_format(tmp_path):
    cfg = make(tmp_path, step_separator="\n\n", step_tag=" ки")
    assert cfg.step_format == StepFormat(separator="\n\n", tag=" ки")
    assert cfg.loss_type == ["sigmoid"] and cfg.pair_strategy == "first_error"
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
])
def test_bad_combinations_raise(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make(tmp_path, **kw)


def test_docstring_examples_of_the_stepdpo_modules():
    import doctest

    import stepdpo.config
    import stepdpo.pairs
    import stepdpo.sampling
    import stepdpo.trainer

    for mod in (stepdpo.config, stepdpo.pairs, stepdpo.sampling, stepdpo.trainer):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0, mod.__name__
