"""Export a retrained network to ONNX or TorchScript: ``adl export``.

    python experiments/export.py --experiment results/<name> --format onnx --out-file model.onnx

The command lives in `orchestrator.commands.export` (installed as ``adl export``); this script runs the same
``main`` with the same arguments. ``--help`` lists them, with examples and defaults.
"""

from __future__ import annotations

import sys

from orchestrator.commands import export as command


def main(argv: list[str] | None = None) -> int:
    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
