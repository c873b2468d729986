"""What the inference and training benchmarks share: a case, its inputs and timing, and its result rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import torch

from ptuning_v2.benchmarks import variants
from ptuning_v2.benchmarks.timing import Summary, interleaved, summarize
from ptuning_v2.models import BackboneKind

Key = tuple[str, int | None]
"""A variant of a case: the method, and its prompt length (None for methods without one)."""


@dataclass(frozen=True)
class Case:
    """One model on one input shape, and the prompt lengths to compare with the case's reference."""

    model: str
    kind: BackboneKind
    batch: int
    seq_len: int
    lengths: tuple[int, ...]
    """P-Tuning v2 prompt lengths."""
    peft_lengths: tuple[int, ...] = ()
    rounds: int = 10
    warmup: int = 2

    def inputs(self, device: torch.device, seed: int, labels: bool = False) -> dict[str, Any]:
        """The batch every variant of the case runs on (``labels``: with two-class labels)."""
        return variants.random_inputs(
            variants.vocab_size(self.model), self.batch, self.seq_len, device, seed, labels=labels
        )

    def time(
        self, calls: dict[Key, Callable[[], Any]], reference: Key, device: torch.device, seed: int
    ) -> dict[Key, Summary]:
        """Every call timed in interleaved rounds (see ``timing.interleaved``), against ``reference``."""
        samples = interleaved(calls, self.rounds, self.warmup, device, seed)
        return {key: summarize(runs, samples[reference]) for key, runs in samples.items()}


@dataclass
class Row:
    """One variant of one case: its cost against the case's reference variant, or why it failed."""

    model: str
    batch: int
    seq_len: int
    variant: str
    k: int | None
    peak_mib: float | None = None
    """What lives across calls (weights; in training also optimizer state) plus the largest amount of
    tensor memory live during one call."""
    ratio: float | None = None
    """Median over rounds of this variant's wall time / the reference's in the same round."""
    ratio_q1: float | None = None
    ratio_q3: float | None = None
    cpu_ratio: float | None = None
    """The same median on this process's CPU time (less sensitive to other jobs; CPU only)."""
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def measured(cls, case: Case, key: Key, summary: Summary, **values: Any) -> Self:
        """The row of variant ``key`` timed as ``summary``; ``values`` are the section's own columns."""
        return cls(
            case.model,
            case.batch,
            case.seq_len,
            *key,
            ratio=summary.ratio.median,
            ratio_q1=summary.ratio.q1,
            ratio_q3=summary.ratio.q3,
            cpu_ratio=summary.cpu_ratio,
            wall_ms=summary.wall_ms,
            cpu_ms=summary.cpu_ms,
            **values,
        )

    @classmethod
    def failed(cls, case: Case, errors: dict[Key, str]) -> list[Self]:
        """One row per variant that could not be built or run: failures are results too."""
        return [cls(case.model, case.batch, case.seq_len, *key, error=msg) for key, msg in errors.items()]
