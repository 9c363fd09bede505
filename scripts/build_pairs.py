"""`stepdpo build-pairs` as an accelerate entry point (the same main() as the command line).

    accelerate launch --config_file configs/accelerate/cpu.yaml scripts/build_pairs.py --config <recipe>.yaml

Options: `stepdpo build-pairs --help`; any option overrides the recipe (e.g. `--max_samples 100`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from stepdpo.commands import build_pairs as command  # noqa: E402
from stepdpo.commands.common import run  # noqa: E402

if __name__ == "__main__":
    run(command, command=command.COMMAND)
