"""``ptv2 serve``'s options, read by the CLI and by ``ray_app.app_builder`` (``serve run`` / ``serve
deploy``) alike: the arguments, the task names of the checkpoint folders, and the server's limits.

Imports stay light (the CLI builds every sub-command's parser at start): the app is imported on use.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ptuning_v2.config import ConfigError

if TYPE_CHECKING:
    from ptuning_v2.serving.app import ServeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``ptv2 serve``'s options."""
    p.add_argument("--model", help="the backbone (default: the one the first checkpoint was trained on)")
    p.add_argument("--prompts", nargs="*", default=[], metavar="DIR", help="checkpoint folders to serve")
    p.add_argument("--names", nargs="*", metavar="NAME", help="task names, one per --prompts folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="inputs per mixed-task batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=1024, help="waiting requests before answering 503")
    p.add_argument("--max-inputs", type=int, default=64, help="inputs per request (413 past it)")
    p.add_argument("--max-input-chars", type=int, default=10_000, help="characters per input (413 past it)")
    p.add_argument(
        "--overlong",
        choices=["truncate", "refuse"],
        default="truncate",
        help="an input longer than the model's train.max_length: cut it (as ptv2 predict) or answer 422",
    )
    p.add_argument("--no-batching", action="store_true", help="run every request alone")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    ray = p.add_argument_group("Ray Serve (pip install -e '.[ray]'; see docs/serving.md)")
    ray.add_argument(
        "--ray", action="store_true", help="serve as a Ray Serve deployment of --replicas replicas"
    )
    ray.add_argument(
        "--replicas", type=int, default=1, help="replicas, each with its own backbone and prompts"
    )
    ray.add_argument(
        "--ray-address", help="an existing Ray cluster (auto, ray://HOST:10001, ...); default: a local one"
    )
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs Ray reserves per replica")


def checkpoints(args: argparse.Namespace) -> dict[str, str]:
    """Task name -> checkpoint folder, from ``--prompts`` and ``--names``."""
    from ptuning_v2.serving.app import task_name

    if not args.prompts and not args.model:
        raise ConfigError("ptv2 serve: give --prompts checkpoint folders (or --model to start with none)")
    if args.names is not None and len(args.names) != len(args.prompts):
        raise ConfigError(f"--names: {len(args.names)} names for {len(args.prompts)} --prompts folders")
    names = args.names or [task_name(Path(p)) for p in args.prompts]
    if len(set(names)) != len(names):
        raise ConfigError(f"two checkpoints have the same task name in {names}; name them with --names")
    return dict(zip(names, args.prompts, strict=True))


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's limits from the command line, checked."""
    from ptuning_v2.serving.app import ServeConfig

    for flag in ("max_batch_size", "max_queue", "max_inputs", "max_input_chars"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected a positive number")
    if args.max_wait_ms < 0:
        raise ConfigError("--max-wait-ms: expected 0 or more")
    return ServeConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars,
        overlong=args.overlong,
        batching=not args.no_batching,
    )
