"""Where the extra time of a prompted forward pass (or training step) goes, operator by operator.

``torch.profiler`` records each variant of a case for a few calls; the table puts the per-call time
of every operator side by side, so the cost of the prefix shows up as the rows that grow (attention,
the key/value concatenation) against the rows that should not move (the projections and the MLP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ptuning_v2.benchmarks.inference import InferenceCase, build_variants
from ptuning_v2.benchmarks.training import Stepper, TrainingCase, build_variant


@dataclass
class OperatorProfile:
    """Milliseconds per call spent in each operator (self time), for every variant of one case."""

    title: str
    variants: list[str]
    ms: dict[str, dict[str, float]]
    """operator -> variant -> ms per call."""


def profile_calls(
    calls: dict[str, Callable[[], Any]], device: torch.device, repeats: int
) -> dict[str, dict[str, float]]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    table: dict[str, dict[str, float]] = {}
    for name, call in calls.items():
        call()  # warm-up outside the profile
        with profile(activities=activities) as prof:
            for _ in range(repeats):
                call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        for event in prof.key_averages():
            total = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
            table.setdefault(event.key, {})[name] = total / repeats / 1e3
    return table


def profile_inference(
    case: InferenceCase, device: torch.device, dtype: torch.dtype, repeats: int = 3, seed: int = 0
) -> OperatorProfile:
    models, errors = build_variants(case, device, dtype)
    inputs = case.inputs(device, seed)
    calls = {_label(*key): (lambda m=model: m(**inputs)) for key, model in models.items()}
    with torch.inference_mode():
        table = profile_calls(calls, device, repeats)
    title = f"inference {case.model} {case.batch}x{case.seq_len}"
    return OperatorProfile(title, list(calls), table)


def profile_training(
    case: TrainingCase, device: torch.device, dtype: torch.dtype, repeats: int = 2, seed: int = 0
) -> OperatorProfile:
    batch = case.inputs(device, seed, labels=case.kind == "encoder")
    keys = [("full", None)] + [("ptuning_v2", k) for k in case.lengths]
    calls = {_label(*key): Stepper(build_variant(case, *key, device, dtype), batch).step for key in keys}
    title = f"training step {case.model} {case.batch}x{case.seq_len}"
    return OperatorProfile(title, list(calls), profile_calls(calls, device, repeats))


def _label(variant: str, k: int | None) -> str:
    return variant if k is None else f"{variant} k={k}"


def markdown(profiles: list[OperatorProfile], command: str, min_ms: float = 0.5) -> str:
    """One table per case: operators taking at least ``min_ms`` per call in some variant, largest first."""
    lines = ["# Operator profile (self time per call, ms)", "", f"Command: `{command}`", ""]
    for prof in profiles:
        lines += [f"## {prof.title}", "", "| operator | " + " | ".join(prof.variants) + " |"]
        lines.append("|---" * (len(prof.variants) + 1) + "|")
        ops = sorted(prof.ms, key=lambda op: -max(prof.ms[op].values()))
        totals = {v: sum(prof.ms[op].get(v, 0.0) for op in prof.ms) for v in prof.variants}
        for op in ops:
            if max(prof.ms[op].values()) >= min_ms:
                lines.append(
                    f"| {op} | " + " | ".join(f"{prof.ms[op].get(v, 0.0):.1f}" for v in prof.variants) + " |"
                )
        lines.append("| **total** | " + " | ".join(f"{totals[v]:.1f}" for v in prof.variants) + " |")
        lines.append("")
    return "\n".join(lines)
