"""``ptv2 serve --prompts DIR [DIR ...]``: an HTTP server for many tasks on one backbone.

Every checkpoint folder becomes a task (named after its run folder, or by ``--names``); requests for
any tasks are answered in mixed-task batches. ``--ray --replicas N`` serves the same API from N Ray Serve
replicas (``ptuning_v2.serving.ray_app``). See docs/serving.md for the API.
"""

from __future__ import annotations

import argparse
import signal

from ptuning_v2.config import ConfigError
from ptuning_v2.serving.options import add_arguments, checkpoints, serve_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve checkpoints over HTTP, many tasks on one backbone")
    add_arguments(p)
    p.set_defaults(func=run)


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
