"""Work split across the processes of an ``accelerate launch`` run, and gathered back.

Every command and the trainer's online pair building use the same three steps:

1. :func:`shard` - process ``r`` of ``P`` takes the contiguous slice ``r`` of the items, padded
   to the same length on every process (the last item of the slice repeated), so every
   process makes the same number of batched calls;
2. the process works on its slice (its results for the padding are dropped);
3. :func:`gather` - every process receives every process's results, in process order: the
   same list, in the same order, on every process.

:func:`check_same` compares a hash of something every process must agree on (the prompts, a
training set) and raises :class:`RankMismatchError` on every process at once when they differ,
instead of letting the processes run different numbers of steps into a collective that never
returns. Outside a distributed run (one process) every function is a cheap no-op.

>>> shard(list("abcde"), num_processes=2, process_index=1)
(['d', 'e', 'e'], 2)
>>> shard(list("abcde"), num_processes=2, process_index=0)
(['a', 'b', 'c'], 3)
>>> shard([], num_processes=2, process_index=1)
([], 0)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class RankMismatchError(RuntimeError):
    """Processes of one distributed run hold different data where they must hold the same."""


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world() -> tuple[int, int]:
    """``(num_processes, process_index)`` of this run: ``(1, 0)`` without a process group."""
    dist = _dist()
    if dist is None:
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


def is_main_process() -> bool:
    return world()[1] == 0


def init_distributed() -> tuple[int, int]:
    """Start accelerate's process group when this process is one of several (``accelerate
    launch``, ``torchrun``), so the commands can shard; returns :func:`world`.

    On a machine without CUDA the group is gloo on the CPU (accelerate's ``MULTI_CPU``):
    ``ACCELERATE_USE_CPU`` is set for this process, so that a ``Trainer`` created later joins
    the same CPU group instead of falling back to one process (torchrun, which accelerate uses
    for ``configs/accelerate/multi_cpu.yaml``, does not set it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and _dist() is None:
        import torch
        from accelerate import PartialState

        cpu = not torch.cuda.is_available()
        if cpu:
            os.environ["ACCELERATE_USE_CPU"] = "true"
        PartialState(cpu=cpu)
    return world()


def device():
    """This process's device: its own GPU under a multi-GPU launch, cuda when there is one, else cpu."""
    import torch

    if _dist() is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shard_bounds(n: int, num_processes: int, process_index: int) -> tuple[int, int, int]:
    """``(start, stop, size)``: process ``process_index`` owns items ``start:stop`` and pads
    them to ``size`` (the same on every process)."""
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is not in a run of {num_processes} processes")
    size = math.ceil(n / num_processes) if n else 0
    start = min(process_index * size, n)
    return start, min(start + size, n), size


def shard(items: Sequence[Any], num_processes: int | None = None,
          process_index: int | None = None) -> tuple[list[Any], int]:
    """This process's slice of ``items`` padded to the common length, and how many of its
    items are real (the rest repeat its last item, or the very last item of ``items`` when
    the slice is empty, and are to be dropped)."""
    if num_processes is None or process_index is None:
        num_processes, process_index = world()
    start, stop, size = shard_bounds(len(items), num_processes, process_index)
    own = list(items[start:stop])
    if size and len(own) < size:
        filler = own[-1] if own else items[-1]
        own += [filler] * (size - len(own))
    return own, stop - start


def gather(local: Sequence[Any]) -> list[Any]:
    """Every process's ``local`` list, concatenated in process order, on every process."""
    dist = _dist()
    if dist is None:
        return list(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(local))
    return [x for part in parts for x in part]


def gather_object(obj: Any) -> list[Any]:
    """One object per process, in process order, on every process."""
    dist = _dist()
    if dist is None:
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every process."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def shutdown() -> None:
    """End this process's part of a distributed run: wait for the others, then destroy the
    process group (left to interpreter exit, gloo's threads can abort the process after the
    work is done: "terminate called without an active exception")."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def content_hash(obj: Any) -> str:
    """A stable hash of JSON-like data (dataclasses and other objects by their ``repr``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def check_same(obj: Any, what: str, fix: str = "") -> str:
    """Raise :class:`RankMismatchError` on every process when ``obj`` (hashed) differs between
    processes; return the hash. One small collective: no process can be left waiting."""
    h = content_hash(obj)
    hashes = gather_object(h)
    if len(set(hashes)) > 1:
        detail = ", ".join(f"process {i}: {x[:12]}" for i, x in enumerate(hashes))
        raise RankMismatchError(f"the {what} differ between the processes of this run ({detail}). Every process must "
                                f"hold the same {what}; otherwise they run different numbers of steps and wait on each "
                                f"other forever. {fix}".rstrip())
    return h


@contextmanager
def main_process_first():
    """The main process runs the block first (e.g. writes a file), then the others."""
    num, index = world()
    if num > 1 and index != 0:
        barrier()
    yield
    if num > 1 and index == 0:
        barrier()


@contextmanager
def fsdp2_unsharded(module, reshard_after_forward: bool | None = True):
    """Every FSDP-2 module in ``module`` unsharded for the block and kept so across forwards:
    one all-gather on entry (every process must enter together), then forwards that make no
    collective call, so processes may run different numbers of them (sampling a shard of
    prompts). On exit the modules are resharded and get ``reshard_after_forward`` back (the
    setting they were sharded with; None is ``fully_shard``'s default: every module but the
    outermost). A no-op for a module without FSDP-2 parts."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP 2
        yield module
        return
    parts = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in parts:
        m.set_reshard_after_forward(False, recurse=False)
    for m in parts:
        m.unshard()
    try:
        yield module
    finally:
        for i, m in enumerate(parts):
            m.reshard()
            m.set_reshard_after_forward(i > 0 if reshard_after_forward is None else bool(reshard_after_forward),
                                        recurse=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a uniquely named temporary file in the same folder,
    then rename it: readers never see half a file, and concurrent writers never share a
    temporary file."""
    from reward_models.safety import atomic_file

    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


__all__ = ["RankMismatchError", "atomic_write_text", "barrier", "broadcast", "check_same", "content_hash", "device",
           "fsdp2_unsharded", "gather", "gather_object", "init_distributed", "is_main_process", "main_process_first", "shard",
           "shard_bounds", "shutdown", "world"]
