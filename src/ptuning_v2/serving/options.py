"""``ptv2 serve``'s options, read by the CLI and by ``ray_app.app_builder`` (``serve run`` / ``serve
deploy``) alike: the arguments, the task names of the checkpoint folders, and the server's limits.

Imports stay light (the CLI builds every sub-command's parser at start): the app is imported on use.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ptuning_v2.config import ConfigError, finite_float

if TYPE_CHECKING:
    from ptuning_v2.serving.engine import ServeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``ptv2 serve``'s options."""
    p.add_argument("--model", help="the backbone (default: the one the first checkpoint was trained on)")
    p.add_argument("--prompts", nargs="*", default=[], metavar="DIR", help="checkpoint folders to serve")
    p.add_argument("--names", nargs="*", metavar="NAME", help="task names, one per --prompts folder")
    p.add_argument("--store", metavar="DIR", help="a folder of checkpoint folders, loaded on demand")
    p.add_argument("--max-loaded-tasks", type=int, default=100, help="store tasks kept in memory (LRU)")
    p.add_argument(
        "--cache-mb", type=finite_float, default=512.0, help="MiB of store prompts + heads in memory"
    )
    p.add_argument("--api-keys", metavar="FILE", help="API keys, roles and task patterns (YAML)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without --api-keys: anyone can call",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-inputs", action="store_true", help="write the inputs into the access log")
    p.add_argument("--no-access-log", action="store_true", help="no JSON access-log line per request")
    p.add_argument("--max-batch-size", type=int, default=32, help="inputs per mixed-task batch")
    p.add_argument("--max-wait-ms", type=finite_float, default=5.0, help="how long a batch waits to fill")
    p.add_argument(
        "--model-threads",
        type=int,
        default=2,
        help="batches (and generations) run at once, each with a share of the CPU threads",
    )
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
    p.add_argument(
        "--decode-batching",
        action="store_true",
        help="OpenAI-compatible generations share one decode loop, new ones joining at its next step",
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
    ray.add_argument("--replica-cpus", type=finite_float, default=1.0, help="CPUs Ray reserves per replica")
    ray.add_argument("--replica-gpus", type=finite_float, default=0.0, help="GPUs Ray reserves per replica")


def checkpoints(args: argparse.Namespace) -> dict[str, str]:
    """Task name -> checkpoint folder, from ``--prompts`` and ``--names``."""
    if not args.prompts and not args.model and not args.store:
        raise ConfigError("give --prompts checkpoint folders or a --store (or --model to start with none)")
    return named_prompts(args.prompts, args.names)


def named_prompts(prompts: list[str], names: list[str] | None) -> dict[str, str]:
    """Task name -> checkpoint folder; a name is ``--names``' or its folder's, and is a valid task name."""
    from ptuning_v2.serving.multi_prompt import check_task_name, task_name

    if names is not None and len(names) != len(prompts):
        raise ConfigError(f"--names: {len(names)} names for {len(prompts)} --prompts folders")
    chosen = names or [task_name(Path(p)) for p in prompts]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"two checkpoints have the same task name in {chosen}; name them with --names")
    for name, folder in zip(chosen, prompts, strict=True):
        try:
            check_task_name(name)
        except ValueError as exc:
            if names:
                raise ConfigError(f"--names: {exc}") from None
            raise ConfigError(
                f"--prompts {folder}: the task is named after its folder; {exc}; or name it with --names"
            ) from None
    return dict(zip(chosen, prompts, strict=True))


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's limits, store and keys from the command line, checked."""
    from ptuning_v2.serving.auth import read_keys
    from ptuning_v2.serving.engine import ServeConfig

    for flag in (
        "max_batch_size",
        "max_queue",
        "max_inputs",
        "max_input_chars",
        "max_loaded_tasks",
        "max_tokens",
        "model_threads",
    ):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected a positive number")
    if args.max_wait_ms < 0:
        raise ConfigError("--max-wait-ms: expected 0 or more")
    if not args.cache_mb > 0:
        raise ConfigError("--cache-mb: expected a positive number")
    if args.store and not Path(args.store).is_dir():
        raise ConfigError(f"--store {args.store}: not a folder")
    return ServeConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        model_threads=args.model_threads,
        max_queue=args.max_queue,
        max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars,
        overlong=args.overlong,
        batching=not args.no_batching,
        max_tokens=args.max_tokens,
        decode_batching=args.decode_batching,
        store=str(Path(args.store).resolve()) if args.store else None,
        max_loaded_tasks=args.max_loaded_tasks,
        cache_mb=args.cache_mb,
        api_keys=read_keys(args.api_keys) if args.api_keys else None,
        log_inputs=args.log_inputs,
        access_log=not args.no_access_log,
    )


def check_listen(args: argparse.Namespace, config: ServeConfig) -> None:
    """The address to bind: a valid port, a host that resolves, and loopback only unless callers need a
    key (``--api-keys``) or the user said ``--insecure``. Without Ray (whose proxy binds it), the port must
    be free now: found before the backbone loads, not after."""
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: expected a port number from 1 to 65535")
    try:
        infos = socket.getaddrinfo(args.host, args.port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {args.host}: not an address of this machine ({exc})") from None
    addresses = {info[4][0] for info in infos}
    if not args.ray:
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind(address)
            except OSError as exc:
                raise ConfigError(
                    f"--port {args.port}: cannot listen on {args.host} ({exc.strerror}); is another server "
                    "there? Choose another --port"
                ) from None
    loopback = all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    if not loopback and config.api_keys is None and not args.insecure:
        raise ConfigError(
            f"--host {args.host} is reachable from other machines and this server has no --api-keys: anyone "
            "could call it and add tasks from any folder it can read; give --api-keys FILE, or --insecure if "
            "something in front of it (a gateway) already checks callers"
        )
