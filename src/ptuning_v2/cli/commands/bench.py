"""``ptv2 bench``: inference and training cost of P-Tuning v2 against the plain model and other methods."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark latency, throughput, step time and memory (writes JSON, markdown and PNG plots)",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes and few rounds: checks the path only")
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile the target cases operator by operator instead (writes profile.md and profile.json)",
    )
    p.add_argument("--only", choices=["inference", "training"], help="run one section only")
    p.add_argument("--encoder", default="minilm", help="encoder model (alias, folder or hub name)")
    p.add_argument("--decoder", default="smollm2", help="decoder-only language model")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16"
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads (fixed for the run)"
    )
    p.add_argument(
        "--output-dir", default="results/bench", help="where bench.json, bench.md and the plots go"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.benchmarks.suite import full_suite, profile_suite, quick_suite, run_profile, run_suite
    from ptuning_v2.benchmarks.timing import select_device, select_dtype
    from ptuning_v2.config import ConfigError

    if args.profile:
        suite = profile_suite(args.encoder, args.decoder, args.quick)
    else:
        suite = (quick_suite if args.quick else full_suite)(args.encoder, args.decoder)
    if args.only == "inference":
        suite = dataclasses.replace(suite, training=())
    elif args.only == "training":
        suite = dataclasses.replace(suite, inference=())
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    device = select_device(args.device)
    runner = run_profile if args.profile else run_suite
    runner(
        suite,
        Path(args.output_dir),
        device,
        select_dtype(args.dtype, device),
        args.threads,
        command_line(args),
        log=lambda line: print(line, file=sys.stderr),
    )
    written = "profile.md and profile.json" if args.profile else "bench.json, bench.md and PNG plots"
    print(f"results written to {args.output_dir}: {written}")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command with every option spelled out, so the results say exactly how they were made."""
    parts = ["ptv2", "bench"] + [f"--{flag}" for flag in ("quick", "profile") if getattr(args, flag)]
    for name in ("only", "encoder", "decoder", "device", "dtype", "threads", "output_dir"):
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)
