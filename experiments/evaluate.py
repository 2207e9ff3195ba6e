"""Score a retrained network, single-scale and multi-scale, or write Cityscapes test-server files: ``adl evaluate``.

    python experiments/evaluate.py --experiment results/<name>

The command lives in `orchestrator.commands.evaluate` (installed as ``adl evaluate``); this script runs the same
``main`` with the same arguments. ``--help`` lists them, with examples and defaults.
"""

from __future__ import annotations

import sys

from orchestrator.commands import evaluate as command


def main(argv: list[str] | None = None) -> int:
    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
