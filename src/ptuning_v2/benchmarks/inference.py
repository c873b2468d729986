"""Inference cost of P-Tuning v2 against the plain model (and PEFT's prefix tuning) on one input.

All variants of a case run in one process on the same input, interleaved round by round (see
``timing.interleaved``); the plain model is a separately loaded, untouched copy of the backbone, so
the ratio also covers the attention wrapper itself (``k = 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ptuning_v2.benchmarks import variants
from ptuning_v2.benchmarks.timing import MIB, interleaved, module_bytes, peak_bytes, summarize
from ptuning_v2.models import BackboneKind


@dataclass(frozen=True)
class InferenceCase:
    """One model on one input shape, with the prompt lengths to compare against the plain model."""

    model: str
    kind: BackboneKind
    batch: int
    seq_len: int
    lengths: tuple[int, ...]
    peft_lengths: tuple[int, ...] = ()
    rounds: int = 10
    warmup: int = 2


@dataclass
class InferenceRow:
    model: str
    batch: int
    seq_len: int
    variant: str
    """``plain``, ``ptuning_v2`` or ``peft_prefix``."""
    k: int | None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    examples_per_s: float | None = None
    tokens_per_s: float | None = None
    weights_mib: float | None = None
    peak_mib: float | None = None
    """Weights plus the largest amount of tensor memory live during one forward pass."""
    ratio: float | None = None
    """Median over rounds of this variant's wall time / the plain model's in the same round."""
    ratio_q1: float | None = None
    ratio_q3: float | None = None
    cpu_ratio: float | None = None
    """The same median on this process's CPU time (less sensitive to other jobs; CPU only)."""
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    error: str | None = None


def build_variants(
    case: InferenceCase, device: torch.device, dtype: torch.dtype
) -> tuple[dict[tuple[str, int | None], nn.Module], dict[tuple[str, int], str]]:
    """The plain model, P-Tuning v2 at every length (sharing one backbone) and PEFT at its lengths.

    PEFT failures are returned, not raised: they are results too.
    """
    models: dict[tuple[str, int | None], nn.Module] = {
        ("plain", None): variants.backbone(case.model, case.kind, device, dtype)
    }
    shared = variants.backbone(case.model, case.kind, device, dtype)
    for k in case.lengths:
        models[("ptuning_v2", k)] = variants.ptuning_v2(shared, k, device, dtype).eval()
    errors: dict[tuple[str, int], str] = {}
    for k in case.peft_lengths:
        try:
            base = variants.backbone(case.model, case.kind, device, dtype)
            models[("peft_prefix", k)] = variants.peft_prefix(base, case.kind, k, device, dtype).eval()
        except Exception as exc:  # recorded in the results
            errors[("peft_prefix", k)] = f"{type(exc).__name__}: {exc}"
    return models, errors


def run_inference_case(
    case: InferenceCase, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> list[InferenceRow]:
    """Latency, throughput, peak memory and the ratio to the plain model of every variant of ``case``."""
    models, errors = build_variants(case, device, dtype)
    inputs = variants.random_inputs(variants.vocab_size(case.model), case.batch, case.seq_len, device, seed)
    calls = {key: _forward(model, inputs) for key, model in models.items()}
    rows = []
    with torch.inference_mode():
        for key, call in list(calls.items()):
            try:
                call()
            except Exception as exc:  # e.g. PEFT on a model it cannot prefix
                errors[key] = f"{type(exc).__name__}: {exc}"
                del calls[key]
        samples = interleaved(calls, case.rounds, case.warmup, device, seed)
        peaks = {key: peak_bytes(call) for key, call in calls.items()}
    plain = samples[("plain", None)]
    for key, runs in samples.items():
        summary = summarize(runs, plain)
        weights = module_bytes(models[key])
        rows.append(
            InferenceRow(
                case.model,
                case.batch,
                case.seq_len,
                *key,
                latency_p50_ms=summary.p50_ms,
                latency_p90_ms=summary.p90_ms,
                examples_per_s=case.batch / summary.p50_ms * 1e3,
                tokens_per_s=case.batch * case.seq_len / summary.p50_ms * 1e3,
                weights_mib=weights / MIB,
                peak_mib=(weights + peaks[key]) / MIB,
                ratio=summary.ratio.median,
                ratio_q1=summary.ratio.q1,
                ratio_q3=summary.ratio.q3,
                cpu_ratio=summary.cpu_ratio,
                wall_ms=summary.wall_ms,
                cpu_ms=summary.cpu_ms,
            )
        )
    rows += [
        InferenceRow(case.model, case.batch, case.seq_len, *key, error=msg) for key, msg in errors.items()
    ]
    return rows


def _forward(model: nn.Module, inputs: dict[str, Any]) -> Callable[[], Any]:
    return lambda: model(**inputs)
