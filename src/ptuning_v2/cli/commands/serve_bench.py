"""``ptv2 serve-bench --prompts DIR [DIR ...]``: the load test of ``ptv2 serve``, batching on and off, against
the same requests done offline (``OUTPUT_DIR/load.json``, ``load.md``); with ``--store-tasks N``, the store-scale test instead: N tasks
copied from the given checkpoints, three traffic shapes (``store.json``, ``store.md``). Loopback only,
bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ptuning_v2.config import ConfigError, finite_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-bench", help="load-test ptv2 serve (dynamic batching on and off)")
    p.add_argument("--prompts", nargs="+", required=True, metavar="DIR", help="checkpoint folders to serve")
    p.add_argument("--names", nargs="*", metavar="NAME", help="task names, one per --prompts folder")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=640, help="one-input requests per mode")
    p.add_argument("--inputs-per-task", type=int, default=32, help="distinct inputs per task (test split)")
    p.add_argument(
        "--input-tokens",
        type=int,
        metavar="N",
        help="make every text N tokens long (cut, or extended by the next)",
    )
    p.add_argument("--max-seconds", type=finite_float, default=120.0, help="stop a mode after this long")
    p.add_argument(
        "--rounds",
        type=int,
        help="times the batching server answers the requests, each between offline runs (3); with "
        "--store-tasks, times the three traffic shapes run (1)",
    )
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=finite_float, default=5.0)
    p.add_argument("--model-threads", type=int, default=2, help="the server's --model-threads")
    p.add_argument("--output-dir", default="results/serving", help="where the JSON and markdown go")
    store = p.add_argument_group("store scale (ptv2 serve --store)")
    store.add_argument(
        "--store-tasks", type=int, metavar="N", help="build a store of N tasks copied from --prompts; test it"
    )
    store.add_argument("--max-loaded-tasks", type=int, default=100, help="the server's cache bound")
    store.add_argument(
        "--zipf-s", type=finite_float, default=1.1, help="the Zipf exponent of task popularity"
    )
    store.add_argument("--store-dir", help="where to build the store (default: a temporary folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.serving.loadtest import run_load_test
    from ptuning_v2.serving.options import named_prompts

    prompts = named_prompts(args.prompts, args.names)
    for flag in (
        "clients",
        "requests",
        "inputs_per_task",
        "max_loaded_tasks",
        "input_tokens",
        "model_threads",
        "rounds",
    ):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected a positive number")
    command = "ptv2 serve-bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["serve-bench"] else [])
    server_args = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    if args.store_tasks is not None:
        server_args += ["--model-threads", str(args.model_threads)]
        return run_store(args, prompts, server_args, command)
    report = run_load_test(
        prompts,
        Path(args.output_dir),
        clients=args.clients,
        requests=args.requests,
        inputs_per_task=args.inputs_per_task,
        max_seconds=args.max_seconds,
        server_args=server_args,
        command=command,
        batch_size=args.max_batch_size,
        input_tokens=args.input_tokens,
        model_threads=args.model_threads,
        rounds=args.rounds or 3,
    )
    keys = ("throughput_ratio", "p99_ratio", "server_vs_offline", "all_correct")
    print(json.dumps({k: report[k] for k in keys}))
    return 0 if report["all_correct"] else 1


def run_store(
    args: argparse.Namespace, checkpoints: dict[str, str], server_args: list[str], command: str
) -> int:
    from ptuning_v2.serving.store_bench import run_store_bench

    if args.store_tasks < 1:
        raise ConfigError("--store-tasks: expected a positive number")
    if args.store_dir and Path(args.store_dir).exists() and any(Path(args.store_dir).iterdir()):
        raise ConfigError(f"--store-dir {args.store_dir}: not empty; give a new or empty folder")
    report = run_store_bench(
        checkpoints,
        Path(args.output_dir),
        tasks=args.store_tasks,
        max_loaded=args.max_loaded_tasks,
        clients=args.clients,
        requests=args.requests,
        inputs_per_task=args.inputs_per_task,
        max_seconds=args.max_seconds,
        zipf_s=args.zipf_s,
        rounds=args.rounds or 1,
        server_args=server_args,
        store_dir=Path(args.store_dir) if args.store_dir else None,
        command=command,
    )
    keys = ("zipf_vs_all_hot_throughput", "rss_all_hot_vs_one_loaded", "all_correct")
    print(json.dumps({k: report[k] for k in keys}))
    return 0 if report["all_correct"] else 1
