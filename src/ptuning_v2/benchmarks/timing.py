"""Measurement primitives shared by the inference and training benchmarks.

Shared machines are noisy: absolute times from separate runs are not comparable, so every variant
is timed in the same process, in rounds that run each variant once (in a shuffled order), and a
variant's cost is the median over rounds of its time divided by the reference's time in that round.
"""

from __future__ import annotations

import os
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ptuning_v2.config import ConfigError

MIB = 2**20


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def allocator_setting() -> str:
    """``GLIBC_TUNABLES`` as this process has it, or ``glibc defaults``: on a CPU, whether freed memory goes
    back to the system and is faulted in again changes timings by several percent (docs/multi_prompt.md)."""
    return os.environ.get("GLIBC_TUNABLES", "glibc defaults")


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (what GPUs run) and float32 on the CPU (where bf16 is emulated)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"--dtype must be auto or one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


@dataclass(frozen=True)
class Sample:
    """One timed call: wall-clock seconds, and CPU seconds of this process (None on CUDA)."""

    wall: float
    cpu: float | None


def time_call(fn: Callable[[], Any], device: torch.device) -> Sample:
    """Time ``fn``; on CUDA wait for the queued kernels so the wall time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return Sample(time.perf_counter() - start, None)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return Sample(time.perf_counter() - start, time.process_time() - cpu)


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device, seed: int = 0
) -> dict[str, list[Sample]]:
    """Run every function once per round, in a fresh random order each round; ``warmup`` rounds are dropped.

    Sample ``i`` of every function comes from round ``i``, so ratios are taken between calls made
    seconds apart, under the same machine load.
    """
    rng = random.Random(seed)
    names = list(fns)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        rng.shuffle(names)
        for name in names:
            sample = time_call(fns[name], device)
            if index >= warmup:
                samples[name].append(sample)
    return samples


def paired(
    reference: Callable[[], Any],
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, list[tuple[Sample, Sample]]]:
    """Per round, each function (in a fresh random order) timed right beside a call of ``reference`` (which
    of the two goes first is random too); ``warmup`` rounds are dropped.

    For ratios of a few percent: a pair is taken within a second, so the machine's drift over a round of
    many functions does not reach it (``interleaved`` compares calls a whole round apart)."""
    rng = random.Random(seed)
    names = list(fns)
    pairs: dict[str, list[tuple[Sample, Sample]]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        rng.shuffle(names)
        for name in names:
            if rng.random() < 0.5:
                ref, own = time_call(reference, device), time_call(fns[name], device)
            else:
                own, ref = time_call(fns[name], device), time_call(reference, device)
            if index >= warmup:
                pairs[name].append((ref, own))
    return pairs


@dataclass(frozen=True)
class RatioStats:
    """Median and quartiles of per-round ratios ``other / reference``, and a 95 % interval of the median."""

    median: float
    q1: float
    q3: float
    n: int
    low: float
    high: float
    """Where the true median lies, 95 % of the time (``median_interval``)."""


def ratio_stats(reference: list[float], other: list[float]) -> RatioStats:
    """Statistics of the per-round ratios; both lists hold one time per round, in round order."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"need one time per round for both, got {len(reference)} and {len(other)}")
    return stats_of_ratios(np.asarray(other, dtype=float) / np.asarray(reference, dtype=float))


def stats_of_ratios(ratios: np.ndarray) -> RatioStats:
    """Median, quartiles and the median's 95 % interval of per-round ratios already taken."""
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    low, high = median_interval(ratios)
    return RatioStats(float(median), float(q1), float(q3), len(ratios), low, high)


def median_interval(values: np.ndarray) -> tuple[float, float]:
    """A 95 % confidence interval of the median that assumes nothing about the distribution: the sorted
    values at the ranks ``(n - 1.96 sqrt(n)) / 2`` and ``1 + (n + 1.96 sqrt(n)) / 2``, between which the
    binomial count of values under the true median falls 95 % of the time. Few values: their whole range.

    A target a few percent from 1 is met when the interval's top is under it, not when one median is."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n, spread = len(ordered), 1.96 * np.sqrt(len(ordered))
    low = max(int(np.floor((n - spread) / 2)), 1)
    high = min(int(np.ceil(1 + (n + spread) / 2)), n)
    return float(ordered[low - 1]), float(ordered[high - 1])


def latency_stats(times: list[float]) -> tuple[float, float]:
    """p50 and p90 of the times, in milliseconds."""
    p50, p90 = np.percentile(np.asarray(times, dtype=float) * 1e3, [50, 90])
    return float(p50), float(p90)


@dataclass(frozen=True)
class Summary:
    """One variant's times over the rounds, against the reference's in the same rounds."""

    p50_ms: float
    p90_ms: float
    ratio: RatioStats
    cpu_ratio: float | None
    """Median ratio of process CPU times (None on CUDA, where the CPU time says nothing)."""
    wall_ms: list[float]
    cpu_ms: list[float]


def summarize(runs: list[Sample], reference: list[Sample]) -> Summary:
    """Latency percentiles and per-round ratios of ``runs`` against ``reference`` (same rounds)."""
    wall = [s.wall for s in runs]
    p50, p90 = latency_stats(wall)
    cpu, reference_cpu = [s.cpu for s in runs], [s.cpu for s in reference]
    has_cpu = all(t is not None for t in cpu + reference_cpu)
    return Summary(
        p50,
        p90,
        ratio_stats([s.wall for s in reference], wall),
        ratio_stats(reference_cpu, cpu).median if has_cpu else None,  # type: ignore[arg-type]
        [t * 1e3 for t in wall],
        [t * 1e3 for t in cpu] if has_cpu else [],  # type: ignore[operator]
    )


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the context, on any device.

    Every op's outputs are followed by storage; a storage counts from the op that creates it until
    it is freed (weak reference callback). Views and in-place results share an input's storage and
    are not counted again. Memory allocated before the context (weights, optimizer state) is not
    counted: callers add it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor.untyped_storage(), inputs)
        return out

    def _track(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        key = storage._cdata
        if key in inputs or key in self._live:
            return
        nbytes = storage.nbytes()

        def release(_: weakref.ref, key: int = key, nbytes: int = nbytes) -> None:
            self._live.pop(key, None)
            self.current -= nbytes

        self._live[key] = weakref.ref(storage, release)
        self.current += nbytes
        self.peak = max(self.peak, self.current)


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return tensor_bytes([*module.parameters(), *module.buffers()])


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak tensor memory allocated while ``fn`` runs (see ``PeakMemory``)."""
    with PeakMemory() as tracker:
        fn()
    return tracker.peak
