"""What every command (`orchestrator.commands`, ``adl <command>``, ``python experiments/<command>.py``) shares:
help with examples and defaults, ``--print-config``, connecting to Ray, and turning user errors into a clear
one-paragraph message and exit status 2, without a traceback.

User errors are the project's own error types (config, data, genotype, checkpoint, storage, resources, a sweep
that cannot be resumed as asked, a search that diverged, a sweep with no usable trial), also when Ray Train raised
one in a worker and handed it back wrapped in its own error; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap

USER_ERROR_EXIT = 2


WAITING_CPUS = 1
"""Logical CPUs a local Ray declares beyond the cores: the Tune trial drivers and the final actor hold 0.1 CPU
each and only wait for their workers, so on a 2-core laptop a trial of 2 one-CPU workers (2.1 CPUs) must fit."""


STATE_TRACKING = "RAY_TRAIN_ENABLE_STATE_TRACKING"
"""Ray's dashboard shows Train runs on its Train page only with this set in the processes that start them (a local
Ray started here inherits it; `cluster.yaml` sets it for ``ray start``)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` as every command shows it: the description (the module docstring, examples included) as written,
    and each option's default after its help, unless the help already names its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if "default" in text or default is None or default is False or default is argparse.SUPPRESS or default == []:
            return text
        return f"{text} (default: %(default)s)"


def command_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of a command whose module docstring is ``doc``; ``prog`` names it in usage lines (``adl
    search``; default: the script's file name)."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def run_arguments(parser: argparse.ArgumentParser, *, config_help: str, name_help: str,
                  overrides_example: str) -> argparse.ArgumentParser:
    """The arguments every entry point that runs a config shares: ``--config``, ``--storage-path``, ``--name``,
    ``--address``, ``--print-config`` and the ``key=value`` overrides."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--storage-path", help="folder (or URI) for results; default: the config's storage_path")
    parser.add_argument("--name", help=name_help)
    address_argument(parser)
    print_config_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {overrides_example}")
    return parser


def print_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML), each key with where its value came from (default, "
                        "the config file or a key=value override), and exit without starting anything")


def print_config(cfg, sources: dict[str, str], *notes: str) -> int:
    """`--print-config`: the resolved config with each key's source, after ``notes`` as comment lines; returns 0,
    the command's exit status."""
    from orchestrator.config.loading import config_yaml

    print("".join(f"# {note}\n" for note in notes) + config_yaml(cfg, sources), end="", flush=True)
    return 0


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: an argparse type for lists of integers (comma-separated, so positional
    ``key=value`` overrides can follow)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one integer")
    return values


def address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address; default: RAY_ADDRESS, a running cluster, else a "
                        "local Ray")


def storage_label(given: str | None, option: str = "--storage-path") -> str:
    """How an error names a storage path: the option that gave it, or the config key it came from."""
    return option if given else "storage_path (from the config)"


def connect_ray(address: str | None = None) -> None:
    """Join ``address``, else RAY_ADDRESS or a running local cluster (``ray job submit`` sets RAY_ADDRESS),
    else start a local Ray whose dashboard listens on 127.0.0.1 only, with `WAITING_CPUS` more logical CPUs
    than cores. Train state tracking is on (`STATE_TRACKING`), so the dashboard's Train page lists the runs."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault(STATE_TRACKING, "1")  # inherited by a local Ray this starts, and by this driver
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        ray.init(dashboard_host="127.0.0.1", num_cpus=(os.cpu_count() or 1) + WAITING_CPUS)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from orchestrator.config import ConfigError
    from orchestrator.data import DataError
    from orchestrator.inference import InferenceError
    from orchestrator.io.checkpointing import CheckpointError
    from orchestrator.io.storage import StorageError
    from orchestrator.sweep.arms import ArmsError
    from orchestrator.sweep.chain import SweepFailedError
    from orchestrator.sweep.tune_driver import SweepError
    from orchestrator.sweep.validation import ValidationError
    from orchestrator.train.trainers import DivergedError, ResourceError
    from search_space.genotypes import GenotypeError

    return (ConfigError, DataError, CheckpointError, ResourceError, GenotypeError, SweepError, SweepFailedError,
            DivergedError, ValidationError, InferenceError, ArmsError, StorageError)


def user_error(err: BaseException) -> BaseException | None:
    """``err`` when it is a user error; else the user error a Ray Train failure carries (a worker's, or the
    controller's), unwrapped from Ray's task-error wrapper so its message has no remote traceback; else None."""
    types = _user_error_types()
    candidates = [err, *(getattr(err, "worker_failures", None) or {}).values(),
                  getattr(err, "controller_failure", None), err.__cause__]
    for candidate in candidates:
        # Ray's task-error wrapper is an instance of the original class too, but its text holds the remote
        # traceback; the original exception is its ``cause``.
        for e in (getattr(candidate, "cause", None), candidate):
            if isinstance(e, types):
                return e
    return None


@contextlib.contextmanager
def user_errors():
    """Print a user error as ``error: <message>`` on stderr and exit with status 2."""
    try:
        yield
    except Exception as caught:
        err = user_error(caught)
        if err is None:
            raise
        # Never break inside a word: paths and keys in the message must stay copyable.
        message = textwrap.fill(str(err), width=110, subsequent_indent="  ", break_on_hyphens=False,
                                break_long_words=False)
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None
