"""Run the benchmarks and regenerate BENCHMARKS.md.

    python -m bench.run --quick                 # < 5 minutes on a 2-core CPU machine
    python -m bench.run --full                  # the sizes of the issue (256 x 8 steps, ~85M backbone)
    python -m bench.run --quick --only scoring  # one benchmark
    python -m bench.run --full --only distributed
                                                # online pair building on 2 CPU processes vs 1 (accelerate launch)
    python -m bench.run --full --device cuda --dtype bfloat16 --backbones qwen2-1.5b --only scoring,sampling,trainer
                                                # a ~1.5B model on one GPU (what bench/gpu.sh runs)

GPU mode is automatic: with CUDA available every benchmark runs there (result files get a
``-cuda`` suffix); ``--device cpu`` keeps it on the CPU. ``--threads`` sets torch's CPU threads
(default 1: on a shared machine more threads are slower under contention); the value is
recorded with each result. ``--backbones`` runs the speed benchmarks on the named backbones
only (see :mod:`bench.models`; a backbone without its own size gets the largest size), and
``--dtype`` sets their weights' dtype; both are recorded in the result's name.
``--smoke`` is a seconds-long size for the test suite (results go to ``--out-dir``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

BENCHMARKS = ("scoring", "sampling", "pairs", "trainer", "helps", "distributed")
SPEED = ("scoring", "sampling", "pairs", "trainer")  # take --backbones / --dtype


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="small sizes (default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="the issue's sizes")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny sizes for the test suite (seconds)")
    p.set_defaults(mode="quick")
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights of the speed benchmarks' models (default float32)")
    p.add_argument("--backbones", default=None,
                   help="comma-separated backbones for the speed benchmarks (default: each one's own list)")
    p.add_argument("--out-dir", default=None, help="where result JSON files go (default bench/results)")
    p.add_argument("--no-markdown", action="store_true", help="do not regenerate BENCHMARKS.md")
    p.add_argument("--markdown-only", action="store_true",
                   help="run nothing: regenerate BENCHMARKS.md from the result files")
    p.add_argument("--markdown", default=None, help="markdown file to regenerate (default BENCHMARKS.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = sorted(set(only) - set(BENCHMARKS))
    if bad:
        raise SystemExit(f"unknown benchmark(s) {bad}; valid: {', '.join(BENCHMARKS)}")
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    if args.markdown_only:
        from bench import common

        md = Path(args.markdown) if args.markdown else common.BENCHMARKS_MD
        common.update_benchmarks_md(Path(args.out_dir) if args.out_dir else common.RESULTS_DIR, md)
        print(f"wrote {md}")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_DISABLED", "true")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)

    import torch

    torch.set_num_threads(args.threads)
    from bench import common, models

    device = common.pick_device(args.device)
    dtype = models.DTYPES[args.dtype]
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()] if args.backbones else None
    for b in backbones or []:
        models.spec(b)  # unknown names fail here, before anything runs
    out_dir = Path(args.out_dir) if args.out_dir else common.RESULTS_DIR
    argv_used = sys.argv[1:] if argv is None else list(argv)
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in argv_used)
    suffix = f"{args.mode}" + ("-cuda" if device.type == "cuda" else "") + \
        (f"-{args.dtype}" if args.dtype != "float32" else "") + (f"-{'-'.join(backbones)}" if backbones else "")
    written = []
    for name in only:
        module = __import__(f"bench.{name}", fromlist=["run"])
        machine = common.machine_info(device)
        t0 = time.perf_counter()
        logging.getLogger("bench").info("running %s (%s mode, device %s, %d thread(s))", name, args.mode, device,
                                        torch.get_num_threads())
        kwargs = {}
        if name in SPEED:
            machine["dtype"] = args.dtype
            kwargs = {"dtype": dtype, "backbones": backbones}
        elif backbones or args.dtype != "float32":
            logging.getLogger("bench").warning("%s ignores --backbones and --dtype", name)
        if name in ("trainer", "helps"):
            kwargs["threads"] = args.threads
        res = module.run(args.mode, device, **kwargs)
        payload = {"name": f"{name}-{suffix}", "benchmark": name, "mode": args.mode, "command": command,
                   "machine": machine, "wall_s": round(time.perf_counter() - t0, 1),
                   "load_avg_end": common.load_avg(), **res}
        path = common.write_result(f"{name}-{suffix}", payload, out_dir)
        written.append(path)
        if res.get("markdown"):
            print(res["markdown"], flush=True)
        for row in res["rows"]:
            print(f"{row['benchmark']}: ratio {row['ratio']:.2f}x (target {row['target']}) met={row['met']}",
                  flush=True)
    if not args.no_markdown:
        md = Path(args.markdown) if args.markdown else common.BENCHMARKS_MD
        common.update_benchmarks_md(out_dir, md)
        print(f"wrote {md}")
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
