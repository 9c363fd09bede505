"""Test-wide settings: never touch a model hub; keep CPU threads modest; shared tiny fixtures."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to CPU contention


@pytest.fixture(scope="session")
def tokenizer():
    from reward_models.testing import tiny_tokenizer

    return tiny_tokenizer()
