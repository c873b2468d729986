"""``ptv2 serve --prompts DIR [DIR ...]`` / ``--store DIR``: an HTTP server for many tasks on one backbone.

Every checkpoint folder becomes a task (named after its run folder, or by ``--names``); a store's tasks
load on demand. Requests for any tasks are answered in mixed-task batches. ``--ray --replicas N`` serves
the same API from N Ray Serve replicas (``ptuning_v2.serving.ray_app``). Every option is checked before
the backbone loads. See docs/serving.md for the API.
"""

from __future__ import annotations

import argparse
import signal

from ptuning_v2.config import ConfigError
from ptuning_v2.serving.options import add_arguments, check_listen, checkpoints, serve_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve checkpoints over HTTP, many tasks on one backbone")
    add_arguments(p)
    p.set_defaults(func=run)


def run_ray(args: argparse.Namespace) -> int:
    """``--ray``: the same API from Ray Serve replicas, until Ctrl-C or SIGTERM."""
    if args.decode_batching:
        raise ConfigError(
            "--decode-batching is for one process: a Ray replica has one model thread for everything"
        )
    tasks = checkpoints(args)
    config = serve_config(args)
    check_listen(args, config)
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray Serve ({exc}); install it with: pip install -e '.[ray]'"
        ) from None
    from ptuning_v2.serving import ray_app

    app = ray_app.application(args, tasks, config)
    where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray instance"
    stored = f" and the store {config.store} on demand" if config.store else ""
    summary = (
        f"ptv2 serve: {len(tasks)} task(s) {sorted(tasks)}{stored} on {args.replicas} replica(s) of {where}"
    )
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
    check_listen(args, config)
    import uvicorn

    from ptuning_v2.serving.app import create_app
    from ptuning_v2.serving.engine import split_cpu_threads
    from ptuning_v2.serving.observability import configure_access_log
    from ptuning_v2.serving.store import PromptStore, open_backbone

    store = PromptStore(config.store) if config.store else None
    multi = open_backbone(tasks, store, args.model, args.device)
    stored = f" and the store {store.root} on demand" if store else ""
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"ptv2 serve: {len(multi.tasks)} task(s) {sorted(multi.tasks)}{stored} on {multi.model_name} "
        f"(http://{host}:{args.port})",
        flush=True,
    )
    split_cpu_threads(multi, config)
    configure_access_log(config.access_log)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again: a handler that does
    # nothing lets that end as a clean exit (0) rather than a death by signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(create_app(multi, config), host=args.host, port=args.port, log_level="warning")
    print("ptv2 serve: stopped after answering every accepted request", flush=True)
    return 0
