"""``python -m orchestrator.commands <command> ...``: the same as the installed ``adl``."""

import sys

from orchestrator.commands import main

if __name__ == "__main__":
    sys.exit(main())
