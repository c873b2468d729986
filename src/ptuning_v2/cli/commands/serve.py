"""``ptv2 serve --prompts DIR [DIR ...]``: an HTTP server for many tasks on one backbone.

Every checkpoint folder becomes a task (named after its run folder, or by ``--names``); requests for
any tasks are answered in mixed-task batches. ``--ray --replicas N`` serves the same API from N Ray Serve
replicas (``ptuning_v2.serving.ray_app``). See docs/serving.md for the API.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from ptuning_v2.config import ConfigError

if TYPE_CHECKING:
    from ptuning_v2.serving.app import ServeConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve checkpoints over HTTP, many tasks on one backbone")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``ptv2 serve``'s options (also parsed by ``ray_app.app_builder`` for ``serve run``/``serve deploy``)."""
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
    p.add_argument(
        "--max-tokens", type=int, default=1024, help="new tokens an OpenAI-compatible request may ask for"
    )
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

    for flag in ("max_batch_size", "max_queue", "max_inputs", "max_input_chars", "max_tokens"):
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
        max_tokens=args.max_tokens,
    )


def run_ray(args: argparse.Namespace) -> int:
    """``--ray``: the same API from Ray Serve replicas, until Ctrl-C or SIGTERM."""
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray Serve ({exc}); install it with: pip install -e '.[ray]'"
        ) from None
    from ptuning_v2.serving import ray_app

    tasks = checkpoints(args)
    app = ray_app.application(args, tasks, serve_config(args))
    where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray instance"
    summary = f"ptv2 serve: {len(tasks)} task(s) {sorted(tasks)} on {args.replicas} replica(s) of {where}"
    ray_app.serve_until_stopped(app, args.ray_address, args.host, args.port, summary)
    print("ptv2 serve: stopped after answering every accepted request", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.ray:
        return run_ray(args)
    if args.ray_address or args.replicas != 1 or args.replica_cpus != 1 or args.replica_gpus:
        raise ConfigError("--replicas, --ray-address, --replica-cpus and --replica-gpus need --ray")
    config = serve_config(args)
    tasks = checkpoints(args)
    import uvicorn

    from ptuning_v2.serving.app import create_app
    from ptuning_v2.serving.multi_prompt import MultiPromptModel

    multi = MultiPromptModel.from_checkpoints(tasks, device=args.device, model=args.model)
    print(f"ptv2 serve: {len(multi.tasks)} task(s) {sorted(multi.tasks)} on {multi.model_name}", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again: a handler that does
    # nothing lets that end as a clean exit (0) rather than a death by signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(create_app(multi, config), host=args.host, port=args.port, log_level="warning")
    print("ptv2 serve: stopped after answering every accepted request", flush=True)
    return 0
