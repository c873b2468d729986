"""``ptv2 serve-bench --prompts DIR [DIR ...]``: the load test of ``ptv2 serve``, batching on and off.

Writes ``OUTPUT_DIR/load.json`` and ``load.md``; loopback only, bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ptuning_v2.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-bench", help="load-test ptv2 serve (dynamic batching on and off)")
    p.add_argument("--prompts", nargs="+", required=True, metavar="DIR", help="checkpoint folders to serve")
    p.add_argument("--names", nargs="*", metavar="NAME", help="task names, one per --prompts folder")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=640, help="one-input requests per mode")
    p.add_argument("--inputs-per-task", type=int, default=32, help="distinct inputs per task (test split)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop a mode after this long")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--output-dir", default="results/serving", help="where load.json and load.md go")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.serving.app import task_name
    from ptuning_v2.serving.loadtest import run_load_test

    if args.names is not None and len(args.names) != len(args.prompts):
        raise ConfigError(f"--names: {len(args.names)} names for {len(args.prompts)} --prompts folders")
    names = args.names or [task_name(Path(p)) for p in args.prompts]
    for flag in ("clients", "requests", "inputs_per_task"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected a positive number")
    report = run_load_test(
        dict(zip(names, args.prompts, strict=True)),
        Path(args.output_dir),
        clients=args.clients,
        requests=args.requests,
        inputs_per_task=args.inputs_per_task,
        max_seconds=args.max_seconds,
        server_args=["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)],
        command="ptv2 serve-bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["serve-bench"] else []),
    )
    print(json.dumps({k: report[k] for k in ("throughput_ratio", "p99_ratio", "all_correct")}))
    return 0 if report["all_correct"] else 1
