"""Inference cost of P-Tuning v2 against the plain model (and PEFT's prefix tuning) on one input.

All variants of a case run in one process on the same input, interleaved round by round (see
``timing.interleaved``); the plain model is a separately loaded, untouched copy of the backbone, so
the ratio also covers the attention wrapper itself (``k = 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ptuning_v2.benchmarks import variants
from ptuning_v2.benchmarks.cases import Case, Key, Row
from ptuning_v2.benchmarks.timing import MIB, module_bytes, peak_bytes


class InferenceCase(Case):
    """The plain model is the reference; ``peft_lengths`` are PEFT prefix tuning's lengths."""


@dataclass
class InferenceRow(Row):
    """Variants: ``plain``, ``ptuning_v2`` or ``peft_prefix``; ``peak_mib`` covers one forward pass."""

    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    examples_per_s: float | None = None
    tokens_per_s: float | None = None
    weights_mib: float | None = None


def build_variants(
    case: InferenceCase, device: torch.device, dtype: torch.dtype
) -> tuple[dict[Key, nn.Module], dict[Key, str]]:
    """The plain model, P-Tuning v2 at every length (sharing one backbone) and PEFT at its lengths.

    PEFT failures are returned, not raised: they are results too.
    """
    models: dict[Key, nn.Module] = {("plain", None): variants.backbone(case.model, case.kind, device, dtype)}
    shared = variants.backbone(case.model, case.kind, device, dtype)
    for k in case.lengths:
        models[("ptuning_v2", k)] = variants.ptuning_v2(shared, k, device, dtype).eval()
    errors: dict[Key, str] = {}
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
    inputs = case.inputs(device, seed)
    calls = {key: _forward(model, inputs) for key, model in models.items()}
    with torch.inference_mode():
        for key, call in list(calls.items()):
            try:
                call()
            except Exception as exc:  # e.g. PEFT on a model it cannot prefix
                errors[key] = f"{type(exc).__name__}: {exc}"
                del calls[key]
        summaries = case.time(calls, ("plain", None), device, seed)
        peaks = {key: peak_bytes(call) for key, call in calls.items()}
    rows = []
    for key, summary in summaries.items():
        weights = module_bytes(models[key])
        rows.append(
            InferenceRow.measured(
                case,
                key,
                summary,
                latency_p50_ms=summary.p50_ms,
                latency_p90_ms=summary.p90_ms,
                examples_per_s=case.batch / summary.p50_ms * 1e3,
                tokens_per_s=case.batch * case.seq_len / summary.p50_ms * 1e3,
                weights_mib=weights / MIB,
                peak_mib=(weights + peaks[key]) / MIB,
            )
        )
    return rows + InferenceRow.failed(case, errors)


def _forward(model: nn.Module, inputs: dict[str, Any]) -> Callable[[], Any]:
    return lambda: model(**inputs)
