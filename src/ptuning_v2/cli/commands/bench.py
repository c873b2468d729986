"""``ptv2 bench``: inference and training cost of P-Tuning v2 against the plain model and other methods."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from ptuning_v2.config import finite_float


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
    p.add_argument(
        "--size-rows",
        action="store_true",
        help="only the encoder rows of the cost table (inference 16 x 128 at k = 20 and 100, a training step "
        "at k = 20 against full fine-tuning), few rounds: the figures for another model size (--encoder)",
    )
    p.add_argument(
        "--checkpointing",
        action="store_true",
        help="instead: peak training memory of the decoder with and without gradient checkpointing "
        "(writes checkpointing.json and checkpointing.md)",
    )
    p.add_argument(
        "--multitask",
        action="store_true",
        help="instead: 4 tasks on one encoder, mixed-task batches vs grouping by task vs one request at a "
        "time, and memory of one backbone + N prompts (writes multitask.json and multitask.md)",
    )
    p.add_argument(
        "--distinct-tasks",
        action="store_true",
        help="instead: one batch of 32 texts from 1..32 distinct tasks, MultiPromptModel.run against the plain "
        "backbone and PEFT's mixed-adapter LoRA batch (writes distinct_tasks.json and distinct_tasks.md)",
    )
    p.add_argument(
        "--streams",
        action="store_true",
        help="instead: 1, 2, 4, 8 generations at once on ptv2 serve, five ways: one at a time, on two model "
        "threads, in request-level batches, in the decode loop (writes streams.json and streams.md)",
    )
    p.add_argument(
        "--distinct-counts",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32],
        help="for --distinct-tasks: the numbers of distinct tasks per batch, 1 among them (fewer counts: more "
        "rounds in the same time)",
    )
    p.add_argument("--stream-tokens", type=int, default=64, help="new tokens per stream for --streams")
    p.add_argument(
        "--stream-gap-ms",
        type=finite_float,
        default=0.0,
        help="for --streams: one stream's request every this many ms instead of all at once",
    )
    p.add_argument(
        "--stream-counts", type=int, nargs="+", default=[1, 2, 4, 8], help="streams at once for --streams"
    )
    p.add_argument("--requests-per-task", type=int, default=64, help="requests per task for --multitask")
    p.add_argument(
        "--rounds",
        type=int,
        help="timing rounds for --multitask, --distinct-tasks and --streams (5), and for the inference rows of "
        "--size-rows (8)",
    )
    p.add_argument("--seq-len", type=int, default=2048, help="sequence length for --checkpointing")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for --checkpointing")
    p.add_argument("--encoder", default="minilm", help="encoder model (alias, folder or hub name)")
    p.add_argument(
        "--decoder", default="smollm2", help="decoder-only language model; none: the encoder cases only"
    )
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
    from ptuning_v2.benchmarks.suite import (
        Suite,
        full_suite,
        profile_suite,
        quick_suite,
        run_profile,
        run_suite,
        size_suite,
    )
    from ptuning_v2.benchmarks.timing import select_device, select_dtype
    from ptuning_v2.config import ConfigError

    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.rounds is None:
        args.rounds = 8 if args.size_rows else 5
    elif not (args.size_rows or args.multitask or args.distinct_tasks or args.streams):
        raise ConfigError("--rounds applies to --size-rows, --multitask, --distinct-tasks and --streams only")
    elif args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
    if args.checkpointing:
        return run_checkpointing(args)
    if args.multitask:
        return run_multitask(args)
    if args.distinct_tasks:
        return run_distinct_tasks(args)
    if args.streams:
        return run_streams(args)
    if args.profile:
        suite = profile_suite(args.encoder, args.decoder, args.quick)
    elif args.size_rows:
        suite = size_suite(args.encoder, args.rounds)
    else:
        suite = (quick_suite if args.quick else full_suite)(args.encoder, args.decoder)
    if args.decoder == "none":
        suite = Suite(
            inference=tuple(case for case in suite.inference if case.kind == "encoder"),
            training=tuple(case for case in suite.training if case.kind == "encoder"),
        )
    if args.only == "inference":
        suite = dataclasses.replace(suite, training=())
    elif args.only == "training":
        suite = dataclasses.replace(suite, inference=())
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


def run_checkpointing(args: argparse.Namespace) -> int:
    import torch

    from ptuning_v2.benchmarks import checkpointing
    from ptuning_v2.benchmarks.timing import select_device, select_dtype
    from ptuning_v2.config import ConfigError

    if args.seq_len < 1 or args.batch_size < 1:
        raise ConfigError("--seq-len and --batch-size must be at least 1")
    if args.decoder == "none":
        raise ConfigError("--checkpointing measures the decoder: give one with --decoder")
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    rows = checkpointing.measure(
        args.decoder, "causal_lm", args.seq_len, args.batch_size, 20, device, select_dtype(args.dtype, device)
    )
    command = command_line(args) + f" --checkpointing --seq-len {args.seq_len} --batch-size {args.batch_size}"
    checkpointing.write(rows, Path(args.output_dir), command)
    print(checkpointing.markdown(rows, command))
    return 0


def run_multitask(args: argparse.Namespace) -> int:
    import torch

    from ptuning_v2.benchmarks import multitask
    from ptuning_v2.config import ConfigError

    if args.requests_per_task < 1:
        raise ConfigError("--requests-per-task must be at least 1")
    torch.set_num_threads(args.threads)
    command = (
        f"ptv2 bench --multitask --encoder {args.encoder} --requests-per-task {args.requests_per_task} "
        f"--rounds {args.rounds} --threads {args.threads} --output-dir {args.output_dir}"
    )
    result = multitask.run_multitask(args.encoder, args.requests_per_task, 64, 128, args.rounds, command)
    multitask.write(result, Path(args.output_dir))
    print(multitask.markdown(result))
    return 0


def run_distinct_tasks(args: argparse.Namespace) -> int:
    import torch

    from ptuning_v2.benchmarks import distinct_tasks
    from ptuning_v2.benchmarks.timing import select_device
    from ptuning_v2.config import ConfigError

    rows, counts = 32, tuple(sorted(set(args.distinct_counts)))
    if counts[0] != 1 or counts[-1] > rows:
        raise ConfigError(f"--distinct-counts must include 1 and go up to at most {rows}, got {list(counts)}")
    torch.set_num_threads(args.threads)
    chosen = (
        ""
        if list(counts) == list(distinct_tasks.DISTINCT)
        else f" --distinct-counts {' '.join(map(str, counts))}"
    )
    command = (
        f"ptv2 bench --distinct-tasks --encoder {args.encoder} --rounds {args.rounds} --threads {args.threads}"
        f"{chosen} --output-dir {args.output_dir}"
    )
    result = distinct_tasks.run_distinct_tasks(
        args.encoder, rows=rows, prompt_length=32, max_length=128, lora_rank=8, rounds=args.rounds,
        threads=args.threads, command=command, device=select_device(args.device), distinct=counts,
    )  # fmt: skip
    distinct_tasks.write(result, Path(args.output_dir))
    print(distinct_tasks.markdown(result))
    return 0


def run_streams(args: argparse.Namespace) -> int:
    from ptuning_v2.benchmarks import streams
    from ptuning_v2.config import ConfigError

    if args.stream_tokens < 1 or min(args.stream_counts) < 1:
        raise ConfigError("--stream-tokens and --stream-counts must be at least 1")
    if not 0 <= args.stream_gap_ms < float("inf"):
        raise ConfigError(f"--stream-gap-ms must be 0 or more, got {args.stream_gap_ms}")
    if max(args.stream_counts) > len(streams.QUESTIONS):
        raise ConfigError(f"--stream-counts: at most {len(streams.QUESTIONS)} streams at once")
    counts = tuple(sorted(set(args.stream_counts)))
    command = (
        f"ptv2 bench --streams --decoder {args.decoder} --stream-tokens {args.stream_tokens} "
        f"--stream-counts {' '.join(map(str, counts))} "
        + (f"--stream-gap-ms {args.stream_gap_ms:g} " if args.stream_gap_ms else "")
        + f"--rounds {args.rounds} --output-dir {args.output_dir}"
    )
    result = streams.run_streams(
        args.decoder, args.stream_tokens, args.rounds, counts, command, gap_ms=args.stream_gap_ms
    )
    streams.write(result, Path(args.output_dir))
    print(streams.markdown(result))
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command with every option spelled out, so the results say exactly how they were made."""
    parts = ["ptv2", "bench"] + [
        f"--{flag.replace('_', '-')}" for flag in ("quick", "profile", "size_rows") if getattr(args, flag)
    ]
    for name in ("only", "encoder", "decoder", "device", "dtype", "threads", "rounds", "output_dir"):
        value = getattr(args, name) if name != "rounds" or args.size_rows else None
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)
