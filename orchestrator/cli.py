"""What every entry point in experiments/ shares: connecting to Ray and turning user errors into a clear
one-paragraph message and exit status 2, without a traceback.

User errors are the project's own error types (config, data, genotype, checkpoint, resources); anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap

USER_ERROR_EXIT = 2


def connect_ray(address: str | None = None) -> None:
    """Join ``address``, else RAY_ADDRESS or a running local cluster (``ray job submit`` sets RAY_ADDRESS),
    else start a local Ray whose dashboard listens on 127.0.0.1 only."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        ray.init(dashboard_host="127.0.0.1")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from orchestrator.checkpointing import CheckpointError
    from orchestrator.config import ConfigError
    from orchestrator.data import DataError
    from orchestrator.run_search import ResourceError
    from search_space.genotypes import GenotypeError

    return (ConfigError, DataError, CheckpointError, ResourceError, GenotypeError)


@contextlib.contextmanager
def user_errors():
    """Print a user error as ``error: <message>`` on stderr and exit with status 2."""
    try:
        yield
    except _user_error_types() as err:
        message = textwrap.fill(str(err), width=110, subsequent_indent="  ")
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None
