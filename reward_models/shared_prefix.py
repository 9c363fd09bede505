"""Score many token sequences that share prefixes with one forward pass over their prefix tree.

The Yes/No verification queries of one solution (the reference API) all start with the problem and the
previous steps: query ``j`` is ``problem + steps[:j] + question(step j)``, so the queries of an
8-step solution repeat the same prefix eight times. Here the queries of a group (one problem)
are inserted into a token trie, each distinct prefix once, and the trie is laid out as one
sequence ("tree attention"):

* every trie node is one token; its **position id** is its depth (its index in each query
  through it), so it gets exactly the positional encoding it has in the query alone;
* a **4D attention mask** lets each node attend to its ancestors and itself only, which are
  exactly the tokens before it in any query through it.

So the hidden state of each node, and the next-token logits at each query's last token, are
those of the query run alone: the same numbers up to floating-point summation order (checked
to 1e-4 in the tests). Nothing depends on the template: queries are tokenized whole, and
only tokens that are truly identical prefixes are shared.

The order of the nodes in the packed row does not matter (the mask and the position ids
carry the structure), so the query ends are laid out last: ``logits_to_keep`` then computes
vocabulary logits for those positions only.

>>> packed = pack_token_trees([[5, 6, 7], [5, 6, 8, 9]])
>>> packed.rows[0].input_ids, packed.rows[0].position_ids, packed.ends
([5, 6, 8, 7, 9], [0, 1, 2, 2, 3], [(0, 3), (0, 4)])
>>> packed.num_tokens, packed.num_query_tokens
(5, 7)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# attention implementations that apply a custom 4D mask as given (eager adds it; sdpa passes it on)
TREE_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


@dataclass
class PackedRow:
    """One packed sequence: the token trie of some queries.

    Attributes:
        input_ids: ``(n,)`` one token per trie node; interior nodes first, query ends last.
        position_ids: ``(n,)`` each node's depth (its position in every query through it).
        segments: how the trie grew, one entry per query inserted: ``(new, shared)``, the
            nodes the query added (in order) and the nodes it shares with earlier queries
            (its first ``len(shared)`` tokens). A query's tokens are ``shared + new``.
        num_ends: how many of the last nodes are query ends.
    """

    input_ids: list[int]
    position_ids: list[int]
    segments: list[tuple[list[int], list[int]]]
    num_ends: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def fill_mask(self, out: np.ndarray, offset: int = 0) -> None:
        """Set ``out[offset + i, offset + j]`` for every node ``i`` and every node ``j`` it may attend
        to: ``j`` is ``i`` or an ancestor of ``i`` (``out`` is a bool array, left as is elsewhere)."""
        for new, shared in self.segments:
            if not new:
                continue
            rows = np.asarray(new) + offset
            cols = np.asarray(shared + new) + offset
            out[rows[:, None], cols[None, :]] = _pattern(len(shared), len(new))

    def attention_mask(self) -> np.ndarray:
        """``(n, n)`` bool: node ``i`` may attend to node ``j`` (``j`` is ``i`` or an ancestor).

        >>> pack_token_trees([[1, 2], [1, 3]]).rows[0].attention_mask().astype(int).tolist()
        [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
        """
        out = np.zeros((len(self), len(self)), dtype=bool)
        self.fill_mask(out)
        return out


_PATTERNS: dict[tuple[int, int], np.ndarray] = {}


def _pattern(n_shared: int, n_new: int) -> np.ndarray:
    """What ``n_new`` new nodes attend to among ``shared + new``: all shared nodes, then causally."""
    key = (n_shared, n_new)
    if key not in _PATTERNS:
        if len(_PATTERNS) > 4096:  # a cache of small read-only blocks, bounded
            _PATTERNS.clear()
        block = np.ones((n_new, n_shared + n_new), dtype=bool)
        block[:, n_shared:] = np.tril(block[:, n_shared:])
        block.flags.writeable = False
        _PATTERNS[key] = block
    return _PATTERNS[key]


@dataclass
class PackedTrees:
    """Queries packed into rows of token tries (see the module docstring).

    Attributes:
        rows: the packed sequences.
        ends: per query (input order), ``(row index, node index)`` whose logits predict the
            token after the query.
        num_query_tokens: tokens of all queries counted one by one (what per-query scoring runs).
    """

    rows: list[PackedRow]
    ends: list[tuple[int, int]]
    num_query_tokens: int

    @property
    def num_tokens(self) -> int:
        """Tokens through the model (trie nodes, padding not counted)."""
        return sum(len(r) for r in self.rows)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]: bisect on list-slice equality (runs in C)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _RowBuilder:
    """A trie grown from queries inserted in sorted order: each query shares exactly its common
    prefix with the query before it (the longest it shares with any earlier one)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.depth: list[int] = []
        self.segments: list[tuple[list[int], list[int]]] = []
        self.ends: list[int] = []
        self.prev: list[int] = []
        self.prev_path: list[int] = []

    def cost(self, seq: list[int]) -> int:
        return len(seq) - _common_prefix(self.prev, seq)

    def add(self, seq: list[int]) -> None:
        shared = _common_prefix(self.prev, seq)
        new = list(range(len(self.tokens), len(self.tokens) + len(seq) - shared))
        self.tokens.extend(seq[shared:])
        self.depth.extend(range(shared, len(seq)))
        path = self.prev_path[:shared] + new
        self.segments.append((new, self.prev_path[:shared]))
        self.ends.append(path[-1])
        self.prev, self.prev_path = seq, path

    def finish(self) -> tuple[PackedRow, list[int]]:
        """The row with query ends laid out last, and each query's end node in it."""
        ends = list(dict.fromkeys(self.ends))
        is_end = set(ends)
        order = [i for i in range(len(self.tokens)) if i not in is_end] + ends
        new_index = np.empty(len(order), dtype=np.int64)
        new_index[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        row = PackedRow(input_ids=[self.tokens[i] for i in order], position_ids=[self.depth[i] for i in order],
                        segments=[(new_index[n].tolist() if n else [], new_index[sh].tolist() if sh else [])
                                  for n, sh in self.segments],
                        num_ends=len(ends))
        return row, new_index[np.asarray(self.ends, dtype=np.int64)].tolist()


def pack_token_trees(seqs: Sequence[Sequence[int]], groups: Sequence[Hashable] | None = None,
                     max_row_tokens: int | None = None) -> PackedTrees:
    """Pack token sequences into rows of prefix tries.

    The sequences of one ``groups`` key (all one group when None) form one trie, split into
    rows of at most ``max_row_tokens`` nodes (never fewer than the longest sequence; None: no
    limit); sequences
    of different groups never share a row. Empty sequences are errors.
    """
    seqs = [list(s) for s in seqs]
    if any(not s for s in seqs):
        raise ValueError("cannot pack an empty sequence")
    if groups is not None and len(groups) != len(seqs):
        raise ValueError(f"got {len(groups)} group keys for {len(seqs)} sequences")
    cap = max([len(s) for s in seqs] + [max_row_tokens]) if max_row_tokens is not None else float("inf")
    members: dict[Hashable, list[int]] = {}
    for q in range(len(seqs)):
        members.setdefault(groups[q] if groups is not None else None, []).append(q)
    rows: list[PackedRow] = []
    ends: list[tuple[int, int]] = [(0, 0)] * len(seqs)
    for qs in members.values():
        qs = sorted(qs, key=lambda q: seqs[q])
        builder, placed = _RowBuilder(), []
        for q in qs + [None]:
            if q is None or (placed and len(builder.tokens) + builder.cost(seqs[q]) > cap):
                row, nodes = builder.finish()
                for p, node in zip(placed, nodes):
                    ends[p] = (len(rows), node)
                rows.append(row)
                builder, placed = _RowBuilder(), []
            if q is not None:
                builder.add(seqs[q])
                placed.append(q)
    return PackedTrees(rows=rows, ends=ends, num_query_tokens=sum(len(s) for s in seqs))


def tree_attention_supported(model) -> bool:
    """Whether ``model`` (or the base model under a peft wrapper) takes a custom 4D attention mask
    and position ids: a decoder-only transformers model with eager or SDPA attention."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "_attn_implementation", None) not in TREE_ATTENTION_IMPLEMENTATIONS:
        return False
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" in params and "attention_mask" in params


def row_batches(rows: Sequence[PackedRow], token_budget: int) -> list[list[int]]:
    """Row indices grouped into forward passes, rows of similar length together, each pass at
    most ``token_budget`` padded tokens (at least one row).

    >>> rows = [PackedRow([1] * n, list(range(n)), [(list(range(n)), [])], 1) for n in (5, 2, 4)]
    >>> row_batches(rows, 8)
    [[1, 2], [0]]
    """
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    out: list[list[int]] = []
    cur: list[int] = []
    for r in order:
        if cur and (len(cur) + 1) * len(rows[r]) > token_budget:
            out.append(cur)
            cur = []
        cur.append(r)
    if cur:
        out.append(cur)
    return out


def tree_inputs(rows: Sequence[PackedRow], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, position_ids, mask)`` of shapes ``(B, W)``, ``(B, W)``, ``(B, 1, W, W)`` (bool),
    each row left-padded so that its query ends are the last positions. Padding attends only
    to itself (no row of the mask is empty) and nothing attends to padding."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = np.zeros((len(rows), 1, width, width), dtype=bool)
    diag = np.arange(width)
    for b, row in enumerate(rows):
        off = width - len(row)
        ids[b, off:] = torch.tensor(row.input_ids, dtype=torch.long)
        pos[b, off:] = torch.tensor(row.position_ids, dtype=torch.long)
        row.fill_mask(mask[b, 0], off)
        mask[b, 0, diag[:off], diag[:off]] = True
    return ids, pos, torch.from_numpy(mask)


def activation_dtype(model) -> torch.dtype:
    """The dtype the model computes in: its input embeddings' (transformers builds its masks in
    that dtype; a quantized model keeps its embeddings in its compute dtype), else float32."""
    try:
        dtype = model.get_input_embeddings().weight.dtype
    except (AttributeError, NotImplementedError):
        dtype = getattr(model, "dtype", torch.float32)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _mask_for(model, mask: torch.Tensor) -> torch.Tensor:
    """The bool mask as an additive float mask in the model's compute dtype (0 where attended, the
    dtype's minimum elsewhere), as transformers builds its own eager masks: eager attention adds
    it, and SDPA takes it as is (on CPU faster than a bool mask)."""
    dtype = activation_dtype(model)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def tree_next_token_logits(model, packed: PackedTrees, token_ids: Sequence[int], pad_id: int, token_budget: int,
                           logits_to_keep: bool = True, desc: str = "scoring") -> torch.Tensor:
    """``(num_queries, len(token_ids))`` float32 logits of ``token_ids`` as the next token after each
    packed query; one forward per :func:`row_batches` group (call under ``inference_mode``).

    ``logits_to_keep`` (when the model takes it) computes vocabulary logits only for the last
    positions of each row, where the query ends are."""
    from tqdm.auto import tqdm

    from reward_models import hf_utils

    dev = hf_utils.model_device(model)
    cand = torch.tensor(list(token_ids), dtype=torch.long)
    by_row: dict[int, list[int]] = {}
    for q, (r, _node) in enumerate(packed.ends):
        by_row.setdefault(r, []).append(q)
    out = torch.zeros((len(packed.ends), len(cand)), dtype=torch.float32)
    groups = row_batches(packed.rows, token_budget)
    for rows in tqdm(groups, desc=desc, disable=len(groups) < 8, leave=False):
        batch = [packed.rows[r] for r in rows]
        ids, pos, mask = tree_inputs(batch, pad_id)
        width = ids.shape[1]
        keep = max(row.num_ends for row in batch) if logits_to_keep else width
        extra = {"logits_to_keep": keep} if logits_to_keep else {}
        logits = model(input_ids=ids.to(dev), position_ids=pos.to(dev), attention_mask=_mask_for(model, mask.to(dev)),
                       use_cache=False, **extra).logits
        b_idx, c_idx, q_idx = [], [], []
        for b, r in enumerate(rows):
            off = width - len(packed.rows[r])
            for q in by_row[r]:
                b_idx.append(b)
                c_idx.append(off + packed.ends[q][1] - (width - logits.shape[1]))
                q_idx.append(q)
        picked = logits[torch.tensor(b_idx, device=dev), torch.tensor(c_idx, device=dev)][:, cand.to(dev)]
        out[torch.tensor(q_idx)] = picked.float().cpu()
    return out


def exactness_tolerance(model) -> float:
    """Largest absolute difference (per unit of score magnitude) accepted between shared-prefix
    and per-query scores when checking a model at first use: 1e-4 in float32/64; in half
    precision the two layouts round differently (bf16 keeps 8 bits), so there it only catches
    a model that ignores the mask or the positions (0.1)."""
    return 1e-4 if activation_dtype(model) in (torch.float32, torch.float64) else 1e-1


__all__ = ["PackedRow", "PackedTrees", "activation_dtype", "exactness_tolerance", "pack_token_trees", "row_batches",
           "tree_attention_supported", "tree_inputs", "tree_next_token_logits"]
