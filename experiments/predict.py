"""Predict segmentation masks with a retrained network: ``adl predict``.

    python experiments/predict.py --experiment results/<name> --images photos/ --out predictions/

The command lives in `orchestrator.commands.predict` (installed as ``adl predict``); this script runs the same
``main`` with the same arguments. ``--help`` lists them, with examples and defaults.
"""

from __future__ import annotations

import sys

from orchestrator.commands import predict as command


def main(argv: list[str] | None = None) -> int:
    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
