"""``adl``: every job of the project as one installed command, ``adl <command> [options]``.

    adl search --config experiments/configs/default.yaml              # sweep -> decode -> retrain, on Ray
    adl retrain --arch autodeeplab-S --config experiments/configs/cityscapes.yaml
    adl validate --config experiments/configs/default.yaml --out results/arms   # five arms, equal compute, test split
    adl validate --experiment results/<name>                          # the searched genotype against random ones
    adl analyze results/<name>                                        # leaderboard, tables and plots, no Ray
    adl evaluate --experiment results/<name>                          # mIoU, single- and multi-scale, no Ray
    adl predict --experiment results/<name> --images photos/ --out predictions/
    adl export --experiment results/<name> --format onnx --out-file model.onnx
    adl <command> --help                                              # its options, defaults and examples

Each command is a module with ``parse_args`` and ``main(argv)``: ``orchestrator/commands/<command>.py`` (``analyze``:
`orchestrator.analysis.cli`). ``python experiments/<command>.py`` (and ``python -m orchestrator.analyze``) run the
same ``main``. A command's module is imported only when it runs, so ``adl --help`` is quick and nothing imports Ray
before a command needs it.
"""

from __future__ import annotations

import difflib
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "search": ("orchestrator.commands.search", "run the search on Ray: Tune sweep, decode, retrain the best"),
    "retrain": ("orchestrator.commands.retrain", "retrain a genotype or a published architecture on Ray Train"),
    "validate": ("orchestrator.commands.validate", "does the search beat chance? arms at equal compute (on Ray)"),
    "analyze": ("orchestrator.analysis.cli", "read an experiment folder: leaderboard, tables, plots (no Ray)"),
    "evaluate": ("orchestrator.commands.evaluate", "mIoU and per-class IoU of a retrained network (no Ray)"),
    "predict": ("orchestrator.commands.predict", "segment images with a retrained network (no Ray)"),
    "export": ("orchestrator.commands.export", "export a retrained network to ONNX or TorchScript (no Ray)"),
}
"""Command name -> (the module whose ``main(argv, prog)`` runs it, one line for ``adl --help``)."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name.ljust(width)}  {line}" for name, (_, line) in COMMANDS.items())
    return f"usage: adl <command> [options]\n\ncommands:\n{rows}\n\n" + __doc__.split("\n\n")[1] + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run ``adl <command> ...``; the command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"adl {version('autodeeplab-ray')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        print(f"error: unknown command '{name}'{hint} Expected one of: {', '.join(COMMANDS)} (adl --help)",
              file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[name][0]).main(rest, prog=f"adl {name}")
