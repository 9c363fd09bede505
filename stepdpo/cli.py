"""The ``stepdpo`` command line.

    stepdpo demo [--quick] [--output-dir DIR]

``demo`` runs the embedded end-to-end pipeline on the arithmetic task with tiny offline
models. Each stage that exists so far runs; see README.md.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from stepdpo.demo import run_demo

    run_demo(output_dir=args.output_dir, quick=args.quick, seed=args.seed)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepdpo",
        description="Stepwise DPO with pluggable reward models. Run `stepdpo <command> --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded end-to-end demo on the arithmetic task (CPU, offline)")
    demo.add_argument("--quick", action="store_true", help="a smoke run of a couple of minutes at most")
    demo.add_argument("--output-dir", default="outputs/demo", help="where metrics and reports go")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
