"""The ``stepdpo`` command line.

    stepdpo demo [--quick] [--output-dir DIR] [--seed N] [--debug]
    stepdpo <command> [--config recipe.yaml] [--option value ...] [--debug]

``demo`` runs the embedded end-to-end pipeline on the arithmetic task with tiny offline
models. Every other command (``train-prm``, ``train-orm``, ``train-bt``, ``label``,
``build-pairs``, ``train``, ``evaluate``, ``decode``) is a module of
:mod:`stepdpo.commands` whose options are dataclass fields parsed by ``trl.TrlParser``: a
YAML recipe from ``configs/`` sets them, command-line options override it. The same
modules run under ``accelerate launch scripts/<command>.py --config ...``.

An error prints ``stepdpo <command>: error: <message>`` and where its full traceback was logged,
and exits with status 1; ``--debug`` (or ``STEPDPO_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from stepdpo.commands import COMMANDS, command_module

EPILOG = """\
typical workflow:
  stepdpo demo --quick                                   # everything, tiny models, a few minutes on CPU
  stepdpo train-prm --config configs/demo_prm.yaml       # 1. a process reward model
  stepdpo train --config configs/demo_stepdpo.yaml       # 2. Stepwise DPO with a judge
  stepdpo evaluate --config configs/evaluate_arith.yaml  # 3. metrics.json + plots
  stepdpo decode --config configs/decode_arith_beam.yaml # 4. reward-guided decoding

Every command takes --config FILE.yaml (a recipe from configs/) and --option value
overrides; `stepdpo <command> --help` lists all options; --debug shows the full traceback
of an error (otherwise a few lines and a log file). Multi-GPU / DeepSpeed / FSDP:
  accelerate launch --config_file configs/accelerate/<setup>.yaml scripts/<command>.py --config <recipe>.yaml
"""


def _demo(args: argparse.Namespace) -> int:
    from stepdpo.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(args.seed) if args.quick else DemoConfig(seed=args.seed)
    if args.judge:
        cfg.judge = args.judge
    if args.policy_path:
        cfg.policy_path = args.policy_path
    cfg.threads = args.threads
    run_demo(output_dir=args.output_dir, cfg=cfg)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepdpo",
        description="Stepwise DPO with pluggable reward models: train reward models, build step-level "
                    "preference pairs, train policies on them, evaluate and decode. Run `stepdpo <command> "
                    "--help` for a command's options.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    demo = sub.add_parser("demo", help="run the embedded end-to-end demo on the arithmetic task (CPU, offline)",
                          description="Run the embedded end-to-end demo: tiny offline models on the arithmetic "
                                      "task; writes metrics.json, report.md and plots to --output-dir.")
    demo.add_argument("--quick", action="store_true", help="a smoke run of a couple of minutes at most")
    demo.add_argument("--output-dir", default="outputs/demo", help="where metrics and reports go")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the whole run")
    demo.add_argument("--judge", choices=["prm", "checker"], default=None,
                      help="who scores steps when building pairs: the trained PRM or the task's checker "
                           "(default: the demo's setting, see stepdpo/demo.py)")
    demo.add_argument("--policy-path", default=None,
                      help="start from a saved SFT policy (e.g. outputs/demo/policy_sft) instead of training one")
    demo.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    demo.add_argument("--debug", action="store_true",
                      help="on an error, show the full traceback (otherwise a few lines and a log file)")
    demo.set_defaults(func=_demo)
    for name, (_, summary) in COMMANDS.items():
        # listed for --help only: main() hands these commands' arguments to their own TrlParser
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``stepdpo`` with ``argv``; returns the exit status (1 after an error reported on stderr)."""
    from stepdpo.commands.common import CommandFailed, debug_from_env, reported_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            from stepdpo.commands.common import run

            run(command_module(argv[0]), argv[1:], command=argv[0])
            return 0
        args = make_parser().parse_args(argv)
        with reported_errors(args.command, argv[1:], getattr(args, "debug", False) or debug_from_env()):
            return args.func(args)
    except CommandFailed as e:
        return e.code


if __name__ == "__main__":
    sys.exit(main())
