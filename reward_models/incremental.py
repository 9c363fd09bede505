"""Append-as-you-go JSONL output that resumes where a killed run stopped, without duplicates.

:func:`run_in_chunks` processes items in fixed chunks. After each chunk its rows are
appended to ``output_path`` (flushed and fsynced), then one line is appended to the sidecar
``output_path + ".progress"``: the chunk index, the byte size of the output after it, and the
chunk's stats. On restart (``resume=True``) the output is cut back to the size recorded by
the last finished chunk (dropping the rows of a chunk that was interrupted half-written),
finished chunks are skipped, and the rest is computed. A fingerprint of the items and
settings is stored with the progress: resuming with different inputs is refused (the
reward model and sampler objects are not part of it: resume with the same ones).

Chunks are numbered from the start of the input, so a caller that seeds each chunk from its
index (pair building and Monte-Carlo labeling do) gets the same rows whether or not the run
was interrupted.

>>> import tempfile, os
>>> d = tempfile.mkdtemp(); out = os.path.join(d, "o.jsonl")
>>> rows, stats = run_in_chunks(["a", "b", "c"], lambda idx, chunk: ([{"x": c} for c in chunk], {"n": len(chunk)}),
...                             out, chunk_size=2)
>>> [r["x"] for r in rows], stats
(['a', 'b', 'c'], {'n': 3})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reward_models.types import DataError

logger = logging.getLogger(__name__)


def fingerprint(items: Sequence[Any], settings: Any = None) -> str:
    """A stable hash of the inputs and settings (JSON-serialized; repr for other objects)."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    for it in items:
        h.update(json.dumps(it, sort_keys=True, default=repr).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _read_progress(path: Path, source: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                # only a torn last line can come from a kill; anything else is corruption
                if f.readline():
                    raise DataError("corrupt progress line", source=source, row=n) from None
                logger.warning("%s: ignoring a torn last progress line %d", source, n)
    return out


def run_in_chunks(items: Sequence[Any], process: Callable[[int, list[Any]], tuple[list[dict], dict[str, int]]],
                  output_path: str | os.PathLike, *, chunk_size: int = 8, resume: bool = True,
                  settings: Any = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run ``process(chunk_index, chunk_items) -> (rows, stats)`` over chunks, appending rows to
    ``output_path`` as JSONL; returns all rows (old and new) and the summed stats.

    ``resume=False`` starts over (the output and its progress file are replaced)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    items = list(items)
    out = Path(output_path)
    prog = Path(str(out) + ".progress")
    out.parent.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(items, {"chunk_size": chunk_size, "settings": settings})
    done: dict[int, dict[str, Any]] = {}
    size = 0
    lines = _read_progress(prog, str(prog)) if resume else []
    if lines:
        if lines[0].get("fingerprint") != fp:
            raise DataError(f"{out} was written for other inputs or settings; pass resume=False to start over "
                            "or choose another output path", source=str(prog), row=1, field="fingerprint")
        for line in lines[1:]:
            done[int(line["chunk"])] = line
            size = int(line["size"])
    else:
        if resume and out.exists() and out.stat().st_size:
            raise DataError(f"{out} exists without a progress file; refusing to append to it (resume=False starts "
                            "over)", source=str(out))
        prog.write_text(json.dumps({"fingerprint": fp}) + "\n", encoding="utf-8")
    if size and (not out.exists() or out.stat().st_size < size):
        raise DataError(f"{out} is shorter than its progress file records ({size} bytes): it was changed or "
                        "removed; pass resume=False to start over", source=str(out))
    with out.open("a+b") as f:
        f.truncate(size)  # drop rows of an interrupted chunk
    n_chunks = (len(items) + chunk_size - 1) // chunk_size
    if done:
        logger.info("%s: resuming, %d of %d chunks already done", out, len(done), n_chunks)
    for c in range(n_chunks):
        if c in done:
            continue
        rows, stats = process(c, items[c * chunk_size:(c + 1) * chunk_size])
        with out.open("ab") as f:
            for r in rows:
                f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        with prog.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"chunk": c, "size": size, "rows": len(rows), "stats": dict(stats)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done[c] = {"stats": dict(stats)}
    total: Counter = Counter()
    for line in done.values():
        total.update(line.get("stats") or {})
    rows_all = []
    with out.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows_all.append(json.loads(line))
    return rows_all, dict(total)


def plain_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON-plain keyword arguments of a run (they go into its fingerprint; objects do not).

    >>> plain_settings({"k": 4, "threshold": None, "sampler": object()})
    {'k': 4, 'threshold': None}
    """
    return {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool, type(None)))}


def rows_as(from_dict: Callable[[dict[str, Any]], Any], rows: Sequence[dict[str, Any]],
            output_path: str | os.PathLike) -> list[Any]:
    """Rebuild records from output rows; a bad row's DataError names the output file and row (1-based)."""
    out = []
    for n, row in enumerate(rows, start=1):
        try:
            out.append(from_dict(row))
        except DataError as e:
            raise e.at(source=str(output_path), row=n) from None
    return out


__all__ = ["fingerprint", "plain_settings", "rows_as", "run_in_chunks"]
