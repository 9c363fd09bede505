"""One step format for everything: splitting, joining and piecewise tokenization of steps.

A :class:`StepFormat` is the single source of truth for how a solution is laid out as text:
each step is followed by an optional scoring ``tag`` (``" ки"`` for Math-Shepherd,
``"<extra_0>"`` for Qwen PRMs) and then the ``separator`` (``"\\n"``, ``"\\n\\n"``, ...). The
same object gives generation stop strings, PRM tokenization, pair building and DPO
tokenization, so the context a policy is trained on is byte-for-byte the context it
generated from.

Token ids are built **piecewise**: the prompt, then each step's piece
(``step + tag + separator``) tokenized on its own, so no token ever merges across a step
boundary. Consequently the ids of ``prompt + first k steps`` are a prefix of the ids of
``prompt + all steps``.

>>> fmt = StepFormat(separator="\\n")
>>> fmt.join(["1+2=3", "Answer: 3"])
'1+2=3\\nAnswer: 3\\n'
>>> fmt.split('1+2=3\\nAnswer: 3\\n')
['1+2=3', 'Answer: 3']
>>> StepFormat(separator="\\n", tag=" ки", final_separator=False).join(["a", "b"])
'a ки\\nb ки'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from reward_models.types import DataError


@dataclass(frozen=True)
class TokenizedSteps:
    """Ids of ``prompt + steps`` built piecewise, with each step's token span.

    Attributes:
        input_ids: all token ids, length ``L``.
        prompt_len: number of prompt tokens; ``input_ids[:prompt_len]`` is the prompt.
        spans: per step ``(start, end)`` (end exclusive); the spans are contiguous and
            partition ``input_ids[prompt_len:]``. A span covers ``step + tag + separator``.
        score_positions: per step, the index of the token at which a reward model reads the
            step's score: the last token of the tag when the format has one, otherwise the
            last token of the step's piece (its separator when it has one).
    """

    input_ids: list[int]
    prompt_len: int
    spans: list[tuple[int, int]]
    score_positions: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class StepFormat:
    """How steps are laid out as text.

    Args:
        separator: text after each step (and its tag), e.g. ``"\\n"`` or ``"\\n\\n"``. Steps
            must not contain it.
        tag: optional scoring tag placed right after each step, before the separator
            (``" ки"``, ``"<extra_0>"``). ``None`` reads scores at the step's last token.
        final_separator: whether the last step of a complete solution is also followed by
            the separator. Contexts for generating a next step always end with a separator.
    """

    separator: str = "\n"
    tag: str | None = None
    final_separator: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.separator, str) or self.separator == "":
            raise ValueError("StepFormat.separator must be a non-empty string")
        if self.tag is not None and (not isinstance(self.tag, str) or self.tag == ""):
            raise ValueError("StepFormat.tag must be None or a non-empty string")
        if self.tag is not None and self.separator in self.tag:
            raise ValueError(f"StepFormat.tag {self.tag!r} must not contain the separator")

    # -- text --------------------------------------------------------------------------------
    def check_step(self, step: Any, index: int | None = None) -> str:
        """Validate one step; raise :class:`DataError` naming the step when it is unusable."""
        name = "step" if index is None else f"steps[{index}]"
        if not isinstance(step, str):
            raise DataError(f"expected a string, got {type(step).__name__}", field=name)
        if not step.strip():
            raise DataError("a step must not be empty", field=name)
        if self.separator in step:
            raise DataError(f"a step must not contain the step separator {self.separator!r}: {step[:80]!r}",
                            field=name)
        if self.tag is not None and self.tag in step:
            raise DataError(f"a step must not contain the scoring tag {self.tag!r}", field=name)
        return step

    def piece(self, step: str, *, last: bool = False, complete: bool = True) -> str:
        """The text of one step as it appears in a solution: ``step + tag + separator``."""
        text = step + (self.tag or "")
        if not (last and complete and not self.final_separator):
            text += self.separator
        return text

    def join(self, steps: Sequence[str], *, complete: bool = True) -> str:
        """Lay out steps as text. ``complete=False`` ends with a separator (a context)."""
        steps = [self.check_step(s, i) for i, s in enumerate(steps)]
        return "".join(self.piece(s, last=i == len(steps) - 1, complete=complete) for i, s in enumerate(steps))

    def split(self, text: str) -> list[str]:
        """Split solution text into steps (inverse of :meth:`join`; empty parts are not steps)."""
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", field="text")
        parts = text.split(self.separator)
        steps = []
        for part in parts:
            if self.tag is not None:
                part = part[: -len(self.tag)] if part.endswith(self.tag) else part.replace(self.tag, "")
            if part.strip():
                steps.append(part)
        return steps

    @property
    def stop_strings(self) -> list[str]:
        """Strings at which step-wise generation stops (the end of one step)."""
        return [self.separator]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StepFormat:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise DataError(f"expected a dict, got {type(data).__name__}", field="step_format")
        unknown = set(data) - {"separator", "tag", "final_separator"}
        if unknown:
            raise DataError(f"unknown key(s) {sorted(unknown)}", field="step_format")
        return cls(**data)

    # -- tokens ------------------------------------------------------------------------------
    def tokenize(self, tokenizer, prompt: str, steps: Sequence[str], *, complete: bool = True,
                 add_special_tokens: bool = True) -> TokenizedSteps:
        """Tokenize ``prompt`` then each step piece on its own; see :class:`TokenizedSteps`.

        ``add_special_tokens`` applies to the prompt only (a BOS token, for models that use
        one); step pieces never get special tokens. ``complete=False`` tokenizes a context
        (every step followed by the separator) for generating the next step.
        """
        return self.tokenize_many(tokenizer, [prompt], [steps], complete=complete,
                                  add_special_tokens=add_special_tokens)[0]

    def tokenize_many(self, tokenizer, prompts: Sequence[str], steps: Sequence[Sequence[str]], *,
                      complete: bool = True, add_special_tokens: bool = True,
                      rows: Sequence[int] | None = None) -> list[TokenizedSteps]:
        """:meth:`tokenize` of each ``(prompt, steps)``, with every prompt and every step piece of
        all solutions in one batched tokenizer call each (the same ids: each text is still
        tokenized on its own; a call per piece costs more in Python than in the tokenizer).
        A bad step raises :class:`DataError` at its solution's row (``rows[i]``, else ``i``)."""
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")

        def at_row(err: DataError, i: int) -> DataError:  # one solution alone (tokenize) keeps the error as is
            return err.at(row=rows[i] if rows is not None else i) if len(prompts) > 1 or rows is not None else err

        checked, texts = [], []
        for i, (prompt, sol) in enumerate(zip(prompts, steps)):
            try:
                if not isinstance(prompt, str):
                    raise DataError(f"expected a string, got {type(prompt).__name__}", field="prompt")
                sol = [self.check_step(x, j) for j, x in enumerate(sol)]
            except DataError as e:
                raise at_row(e, i) from None
            checked.append(sol)
            texts.extend(self.piece(x, last=j == len(sol) - 1, complete=complete) for j, x in enumerate(sol))
        given = [p for p in prompts if p]
        prompt_ids = iter(_batch_ids(tokenizer, given, add_special_tokens) if given else [])
        bos = (getattr(tokenizer, "bos_token_id", None) is not None and add_special_tokens
               and (all(prompts) or adds_bos(tokenizer)))
        pieces = iter(self._tokenize_pieces(tokenizer, [x for sol in checked for x in sol], texts))
        out = []
        for i, (prompt, sol) in enumerate(zip(prompts, checked)):
            ids = list(next(prompt_ids)) if prompt else ([tokenizer.bos_token_id] if bos else [])
            prompt_len = len(ids)
            spans, positions = [], []
            for step in sol:
                piece_ids, score_offset = next(pieces)
                if piece_ids is None:
                    raise at_row(DataError(f"step {step[:80]!r} tokenizes to no tokens", field="steps"), i)
                start = len(ids)
                ids.extend(piece_ids)
                spans.append((start, len(ids)))
                positions.append(start + score_offset)
            out.append(TokenizedSteps(input_ids=ids, prompt_len=prompt_len, spans=spans, score_positions=positions))
        return out

    def _tokenize_pieces(self, tokenizer, steps: list[str], texts: list[str]) -> list[tuple[list[int] | None, int]]:
        """Ids of each piece and the offset (within it) of the token a score is read at (None ids:
        the piece has no tokens)."""
        if not texts:
            return []
        if self.tag is None:
            return [(list(ids), len(ids) - 1) if len(ids) else (None, 0)
                    for ids in _batch_ids(tokenizer, texts, False)]
        out = []
        if getattr(tokenizer, "is_fast", False):
            enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            for step, ids, offsets in zip(steps, enc["input_ids"], enc["offset_mapping"]):
                tag_end = len(step) + len(self.tag)  # character index just after the tag
                pos = max((j for j, (s, _e) in enumerate(offsets) if s < tag_end), default=len(ids) - 1)
                out.append((list(ids), pos))
            return out
        # slow tokenizers have no offsets: tokenize step+tag and the separator apart
        for step, text in zip(steps, texts):
            tag_end = len(step) + len(self.tag)
            head = list(tokenizer(text[:tag_end], add_special_tokens=False)["input_ids"])
            tail = list(tokenizer(text[tag_end:], add_special_tokens=False)["input_ids"]) if text[tag_end:] else []
            out.append((head + tail, len(head) - 1))
        return out


def _batch_ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each text, tokenized on its own, in one tokenizer call."""
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


DEFAULT_STEP_FORMAT = StepFormat()

# ``step_separator: auto``: the first of these that no step of the training data contains
AUTO_SEPARATOR = "auto"
SEPARATOR_CANDIDATES = ("\n", "\n\n", "\n\n\n")


def choose_separator(steps: Iterable[str], candidates: Sequence[str] = SEPARATOR_CANDIDATES) -> str:
    r"""The first of ``candidates`` that no step contains (PRM800K's final steps hold ``"\n\n"``).

    >>> choose_separator(["a", "b"]), choose_separator(["x = 2\ny = 3", "# Answer\n\n7"])
    ('\n', '\n\n\n')
    """
    steps = [s for s in steps if isinstance(s, str)]
    for sep in candidates:
        if not any(sep in s for s in steps):
            return sep
    raise ValueError(f"every candidate step separator {list(candidates)} occurs inside a step: set step_separator "
                     "to a text no step contains (e.g. '<extra_0>')")
MATH_SHEPHERD_FORMAT = StepFormat(separator="\n", tag=" ки", final_separator=False)
# Qwen2.5-Math-PRM lays steps out as "<extra_0>".join(steps) + "<extra_0>": the tag is the separator.
QWEN_PRM_FORMAT = StepFormat(separator="<extra_0>")


def tokenize_steps(tokenizer, prompt: str, steps: Sequence[str], step_format: StepFormat | None = None,
                   **kwargs) -> TokenizedSteps:
    """Module-level shortcut for ``step_format.tokenize(tokenizer, prompt, steps)``."""
    return (step_format or DEFAULT_STEP_FORMAT).tokenize(tokenizer, prompt, steps, **kwargs)


__all__ = ["DEFAULT_STEP_FORMAT", "MATH_SHEPHERD_FORMAT", "QWEN_PRM_FORMAT", "StepFormat", "TokenizedSteps",
           "adds_bos", "tokenize_steps"]
