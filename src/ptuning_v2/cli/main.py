"""``ptv2``: one command line for training, evaluation, prediction, comparison and benchmarks.

Each sub-command is a module in ``ptuning_v2.cli.commands`` with ``add_parser(subparsers)``; the
parser it adds sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from ptuning_v2.cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptv2", description="P-Tuning v2: deep prompts on frozen transformers"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening; weight loading is instant
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for users; PTV2_DEBUG=1 shows the traceback
        if os.environ.get("PTV2_DEBUG") or not is_user_error(exc):
            raise
        print(f"ptv2 {args.command}: error: {exc}", file=sys.stderr)
        return 2


def is_user_error(exc: Exception) -> bool:
    """Errors about the user's input or environment, whose message says all there is to say."""
    from ptuning_v2.checkpoint import CheckpointError
    from ptuning_v2.config import ConfigError
    from ptuning_v2.data import DataError
    from ptuning_v2.models import ModelLoadError
    from ptuning_v2.training.trainer import TrainingDivergedError
    from ptuning_v2.utils.cache import FetchError

    return isinstance(
        exc,
        ConfigError
        | DataError
        | ModelLoadError
        | CheckpointError
        | FetchError
        | FileNotFoundError
        | TrainingDivergedError,
    )


if __name__ == "__main__":
    sys.exit(main())
