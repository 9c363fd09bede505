"""Train the small byte-level BPE tokenizer that ships in reward_models/assets/tiny_tokenizer.

    python scripts/make_tiny_tokenizer.py

Byte-level, so any text (unicode included) round-trips; digits are always single tokens
(as in Qwen/Llama-3 tokenizers), which keeps arithmetic learnable by tiny models. Merges
are learned from the embedded arithmetic task and the verification prompts, so common words
("Answer", " Yes", " No") are single tokens. Deterministic: re-running reproduces the file.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from stepdpo.tasks.arith import ArithConfig, gold_steps, inject_error, random_problem, render

SPECIAL = ["<|endoftext|>", "<|pad|>", "<extra_0>"]
ADDED = ["ки"]
OUT = Path(__file__).resolve().parents[1] / "reward_models" / "assets" / "tiny_tokenizer" / "tokenizer.json"
PHRASES = [
    "Is this step correct? Yes or No:", "Is this solution correct? Yes or No:", " Yes", " No",
    "Problem: ", "Solution: ", "Step: ", "Previous steps:", "\n\n", "+", "-", "Human: ", "Assistant: ",
    "<|user|>", "<|assistant|>", "<|system|>", "The answer is", "Let's think step by step.",
]


def corpus(n: int = 4000, seed: int = 0):
    rng = random.Random(seed)
    cfgs = [ArithConfig(), ArithConfig(max_steps=6, ops="+-*", paren_prob=0.5, allow_negative=True)]
    for i in range(n):
        cfg = cfgs[i % 2]
        tree = random_problem(rng, cfg)
        steps = gold_steps(tree) if i % 3 else inject_error(tree, rng, cfg)[0]
        yield cfg.prompt(render(tree)) + "\n".join(steps) + "\n"
    for _ in range(50):
        yield from PHRASES


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_tokens(ADDED)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT))
    print(f"wrote {OUT} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
