"""Safe loading and writing, a leaf module (standard library only).

:func:`refuse_pickles` is called on every folder before anything is loaded from it
(``reward_models.hf_utils.safe_from_pretrained``, ``reward_models.base.load_reward_model``): a folder
holding pickle-based weight files is refused, naming them, because unpickling can run code.
:func:`atomic_file` writes every data file (samples, pairs, results): readers never see half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Write ``path`` through a uniquely named temporary file in the same folder, renamed over it
    when the block ends without error (removed otherwise). The file gets the mode ``open()`` would
    give it (``0o666`` less the umask), not ``mkstemp``'s owner-only ``0o600``.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> with atomic_file(d / "a.txt") as f: _ = f.write("hi")
    >>> (d / "a.txt").read_text(), oct((d / "a.txt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    ('hi', True)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

# files that would need unpickling to load: refused everywhere (weights load from safetensors only)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# transformers.Trainer's resume state inside checkpoint-N dirs: never loaded by load_reward_model
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")

# pickles that trainers write next to the weights but that nothing here ever loads (HF Trainer's
# arguments record in every TRL / transformers output directory)
NEVER_LOADED = frozenset({"training_args.bin"})


def refuse_pickles(path: str | os.PathLike) -> None:
    """Raise if ``path`` holds weight files that would need unpickling (only safetensors load)."""
    path = Path(path)
    if not path.is_dir():
        return
    bad = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and not _is_trainer_state(p.name))
    if bad:
        raise ValueError(
            f"{path} contains {bad}: pickle-based weight files can execute code when loaded and are refused. "
            "Convert them to safetensors (model.save_pretrained(dir, safe_serialization=True)) and remove them."
        )


def _is_trainer_state(name: str) -> bool:
    """Optimizer/scheduler/RNG files a Trainer checkpoint keeps for resuming (they are not weights)."""
    return name in NEVER_LOADED or name in TRAINER_STATE_FILES or (name.startswith("rng_state_")
                                                                    and name.endswith(".pth"))


__all__ = ["NEVER_LOADED", "PICKLE_SUFFIXES", "TRAINER_STATE_FILES", "refuse_pickles"]
