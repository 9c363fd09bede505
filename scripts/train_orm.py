"""`stepdpo train-orm` as an accelerate entry point (the same main() as the command line).

    accelerate launch --config_file configs/accelerate/cpu.yaml scripts/train_orm.py --config <recipe>.yaml

Options: `stepdpo train-orm --help`; any option overrides the recipe (e.g. `--max_samples 100`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from stepdpo.commands import train_orm as command  # noqa: E402
from stepdpo.commands.common import run  # noqa: E402

if __name__ == "__main__":
    run(command, command=command.COMMAND)
