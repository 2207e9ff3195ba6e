"""`python -m orchestrator.analyze`: an alias of `orchestrator.analysis.cli` (installed as ``adl analyze``), kept for
the documented command."""

from orchestrator.analysis.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
