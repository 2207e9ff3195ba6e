"""Retrain a discrete Auto-DeepLab network from a genotype on Ray Train: ``adl retrain``.

    python experiments/retrain.py --arch autodeeplab-S --config experiments/configs/cityscapes.yaml

The command lives in `orchestrator.commands.retrain` (installed as ``adl retrain``); this script runs the same
``main`` with the same arguments. ``--help`` lists them, with examples and defaults.
"""

from __future__ import annotations

import sys

from orchestrator.commands import retrain as command


def main(argv: list[str] | None = None) -> int:
    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
