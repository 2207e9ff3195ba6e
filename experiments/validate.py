"""Does the search beat chance? Validation on the report split: ``adl validate``.

    python experiments/validate.py --experiment results/<name>

The command lives in `orchestrator.commands.validate` (installed as ``adl validate``); this script runs the same
``main`` with the same arguments. ``--help`` lists them, with examples and defaults.
"""

from __future__ import annotations

import sys

from orchestrator.commands import validate as command


def main(argv: list[str] | None = None) -> int:
    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
