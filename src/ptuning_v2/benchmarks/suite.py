"""The benchmark suites behind ``ptv2 bench``: which cases run, and the whole run top to bottom."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from ptuning_v2.benchmarks.inference import InferenceCase, run_inference_case
from ptuning_v2.benchmarks.profile import OperatorProfile, profile_inference, profile_training
from ptuning_v2.benchmarks.profile import markdown as profile_markdown
from ptuning_v2.benchmarks.report import evaluate_targets, write_report
from ptuning_v2.benchmarks.timing import allocator_setting
from ptuning_v2.benchmarks.training import TrainingCase, run_training_case
from ptuning_v2.benchmarks.variants import peft_sequence_classification_error
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

LENGTHS = (0, 20, 50, 100, 200)


@dataclass(frozen=True)
class Suite:
    inference: tuple[InferenceCase, ...]
    training: tuple[TrainingCase, ...]


def full_suite(encoder: str = "minilm", decoder: str = "smollm2") -> Suite:
    """About 12 minutes on one CPU thread; the target cases get the most rounds."""
    return Suite(
        inference=(
            InferenceCase(encoder, "encoder", 1, 128, LENGTHS, rounds=30),
            InferenceCase(encoder, "encoder", 16, 32, LENGTHS, rounds=20),
            InferenceCase(encoder, "encoder", 16, 128, LENGTHS, peft_lengths=(100,), rounds=25),
            InferenceCase(decoder, "causal_lm", 1, 128, LENGTHS, rounds=12),
            InferenceCase(decoder, "causal_lm", 4, 128, (20, 100), peft_lengths=(20, 100), rounds=16),
        ),
        training=(
            TrainingCase(
                encoder,
                "encoder",
                32,
                64,
                (20, 100),
                peft_lengths=(20,),
                eval_backbone_lengths=(20,),
                rounds=12,
            ),
            TrainingCase(decoder, "causal_lm", 2, 64, (100,), peft_lengths=(100,), rounds=8),
        ),
    )


def size_suite(encoder: str, inference_rounds: int = 8) -> Suite:
    """The encoder rows of the cost table (inference 16 x 128 at k = 20 and 100 against the plain model; a
    training step of 32 x 64 at k = 20 against full fine-tuning and LoRA) with few rounds: the same figures
    for another model size in minutes."""
    return Suite(
        inference=(InferenceCase(encoder, "encoder", 16, 128, (20, 100), rounds=inference_rounds, warmup=1),),
        training=(TrainingCase(encoder, "encoder", 32, 64, (20,), rounds=5, warmup=1),),
    )


def quick_suite(encoder: str = "minilm", decoder: str = "smollm2") -> Suite:
    """Small shapes and few rounds: checks the whole path in seconds (numbers are not meaningful)."""
    return Suite(
        inference=(
            InferenceCase(encoder, "encoder", 2, 16, (0, 4), peft_lengths=(4,), rounds=3, warmup=1),
            InferenceCase(decoder, "causal_lm", 2, 16, (4,), peft_lengths=(4,), rounds=3, warmup=1),
        ),
        training=(
            TrainingCase(
                encoder,
                "encoder",
                2,
                16,
                (4,),
                peft_lengths=(4,),
                eval_backbone_lengths=(4,),
                rounds=2,
                warmup=1,
            ),
            TrainingCase(decoder, "causal_lm", 2, 16, (4,), peft_lengths=(4,), rounds=2, warmup=1),
        ),
    )


def profile_suite(encoder: str = "minilm", decoder: str = "smollm2", quick: bool = False) -> Suite:
    """The target cases, to be profiled operator by operator rather than timed."""
    if quick:
        return Suite(
            inference=(InferenceCase(encoder, "encoder", 2, 16, (0, 4)),),
            training=(TrainingCase(encoder, "encoder", 2, 16, (4,)),),
        )
    return Suite(
        inference=(
            InferenceCase(encoder, "encoder", 16, 128, (0, 20, 100)),
            InferenceCase(decoder, "causal_lm", 4, 128, (100,), peft_lengths=(100,)),
        ),
        training=(TrainingCase(encoder, "encoder", 32, 64, (20,)),),
    )


def environment(device: torch.device, dtype: torch.dtype, threads: int) -> dict[str, Any]:
    """What the numbers depend on: versions, device, dtype, threads, machine load."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_name()})",
        "dtype": str(dtype).removeprefix("torch."),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        "allocator": allocator_setting(),
    }


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_suite(
    suite: Suite,
    out_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    threads: int,
    command: str,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every case, write the report after each one (a long run leaves partial results), return them."""
    torch.set_num_threads(threads)
    meta = {"command": command, **environment(device, dtype, threads), "notes": []}
    results: dict[str, Any] = {"meta": meta, "inference": [], "training": []}
    encoders = sorted({case.model for case in suite.inference + suite.training if case.kind == "encoder"})
    for name in encoders:
        error = peft_sequence_classification_error(name)
        meta["notes"].append(
            f"PEFT prefix tuning as a sequence classifier (task_type SEQ_CLS) on {name}: "
            + (f"fails with {error}" if error else "works")
        )
    for section, cases, run in (
        ("inference", suite.inference, run_inference_case),
        ("training", suite.training, run_training_case),
    ):
        for case in cases:
            log(f"{section}: {case.model} {case.batch}x{case.seq_len} ...")
            rows = run(case, device, dtype)  # type: ignore[operator]
            results[section] += [dataclasses.asdict(row) for row in rows]
            meta["load_average_at_end"] = list(os.getloadavg())
            results["targets"] = evaluate_targets(results)
            write_report(results, out_dir)
    return results


def run_profile(
    suite: Suite,
    out_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    threads: int,
    command: str,
    log: Callable[[str], None] = print,
) -> list[OperatorProfile]:
    """Profile every case of ``suite``; writes profile.json and profile.md."""
    torch.set_num_threads(threads)
    profiles = []
    for case in suite.inference:
        log(f"profile inference: {case.model} {case.batch}x{case.seq_len} ...")
        profiles.append(profile_inference(case, device, dtype))
    for case in suite.training:
        log(f"profile training: {case.model} {case.batch}x{case.seq_len} ...")
        profiles.append(profile_training(case, device, dtype))
    meta = {"command": command, **environment(device, dtype, threads)}
    write_json_atomic(
        out_dir / "profile.json", {"meta": meta, "profiles": [dataclasses.asdict(p) for p in profiles]}
    )
    write_text_atomic(out_dir / "profile.md", profile_markdown(profiles, command))
    return profiles
