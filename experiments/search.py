"""Run the Auto-DeepLab search on Ray: the Tune sweep, then decode and retrain the best trial: ``adl search``.

    python experiments/search.py --config experiments/configs/default.yaml [--resume] [key=value ...]

The command lives in `orchestrator.commands.search` (installed as ``adl search``); this script runs the same
``main`` with the same arguments. ``--help`` lists them, with examples and defaults.
"""

from __future__ import annotations

import sys

from orchestrator.commands import search as command


def main(argv: list[str] | None = None) -> int:
    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
