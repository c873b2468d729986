"""Benchmarks: the statistics on synthetic timings, memory accounting, targets, and the whole path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ptuning_v2.benchmarks import timing
from ptuning_v2.benchmarks.report import Target, evaluate_targets
from ptuning_v2.benchmarks.timing import (
    PeakMemory,
    Sample,
    interleaved,
    latency_stats,
    median_interval,
    ratio_stats,
)
from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError


class FakeMachine:
    """Calls report synthetic durations: a per-function cost times a load factor that changes every round."""

    def __init__(self, costs: dict[str, float], loads: list[float]) -> None:
        self.costs, self.loads = costs, loads
        self.calls: list[str] = []

    def fn(self, name: str):
        def call() -> float:
            round_index = len(self.calls) // len(self.costs)
            self.calls.append(name)
            return self.costs[name] * self.loads[round_index]

        return call


def test_interleaving_runs_each_function_once_per_round_and_ratios_cancel_the_load(monkeypatch) -> None:
    monkeypatch.setattr(timing, "time_call", lambda fn, device: Sample(fn(), None))
    loads = [1.0, 3.0, 1.5, 2.5, 1.2, 4.0, 1.1]  # 2 warm-up rounds, then 5 measured
    machine = FakeMachine({"plain": 1.0, "k20": 1.01, "k100": 1.05}, loads)
    samples = interleaved({n: machine.fn(n) for n in machine.costs}, 5, 2, torch.device("cpu"), seed=3)
    rounds = [machine.calls[i : i + 3] for i in range(0, len(machine.calls), 3)]
    assert len(rounds) == 7 and all(sorted(r) == ["k100", "k20", "plain"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds
    assert [s.wall for s in samples["plain"]] == loads[2:]  # warm-up dropped, round order kept
    plain = [s.wall for s in samples["plain"]]
    for name, cost in (("k20", 1.01), ("k100", 1.05)):
        stats = ratio_stats(plain, [s.wall for s in samples[name]])
        assert stats.median == pytest.approx(cost) and stats.q1 == pytest.approx(cost) and stats.n == 5


def test_ratio_and_latency_statistics_match_numpy() -> None:
    reference = [1.0, 2.0, 1.0, 4.0, 1.0]
    other = [1.1, 2.4, 0.9, 4.0, 1.3]
    ratios = [1.1, 1.2, 0.9, 1.0, 1.3]
    stats = ratio_stats(reference, other)
    assert (stats.q1, stats.median, stats.q3) == pytest.approx(tuple(np.percentile(ratios, [25, 50, 75])))
    assert stats.median == pytest.approx(1.1)
    assert latency_stats([0.010, 0.020, 0.030, 0.040, 0.050]) == pytest.approx((30.0, 46.0))
    with pytest.raises(ValueError, match="one time per round"):
        ratio_stats([1.0], [1.0, 2.0])


def test_median_interval_takes_the_order_statistics_of_the_binomial_ranks() -> None:
    values = np.arange(120, 0, -1) / 100  # 1.20 .. 0.01, unsorted
    assert median_interval(values) == (0.49, 0.72)  # ranks 49 and 72 of 120
    assert median_interval(np.array([3.0, 1.0, 2.0])) == (1.0, 3.0)  # few values: all of them
    stats = ratio_stats([1.0] * 120, list(values))
    assert (stats.low, stats.high) == (0.49, 0.72) and stats.low < stats.median < stats.high
    rng = np.random.default_rng(0)
    covered = sum(
        lo <= 1.0 <= hi for lo, hi in (median_interval(rng.normal(1.0, 0.1, 120)) for _ in range(2000))
    )
    assert 0.94 <= covered / 2000 <= 0.98  # a 95 % interval covers the true median about 95 % of the time


def test_peak_memory_counts_new_storages_once_until_freed() -> None:
    x = torch.randn(250, 1000)  # 1 MB, allocated before: not counted
    with PeakMemory() as tracker:
        a = x * 2  # +1 MB
        view = a.view(-1)  # a view: nothing new
        a.add_(1)  # in place: nothing new
        b = a + 1  # +1 MB: peak 2 MB
        del a, view
        c = b + 1  # a freed first: still 2 MB
        del b, c
    assert tracker.peak == 2 * 250 * 1000 * 4
    assert tracker.current == 0


def _row(model, variant, k, wall, ratio=None, peak=100.0, batch=16, seq_len=128):
    return {
        "model": model,
        "batch": batch,
        "seq_len": seq_len,
        "variant": variant,
        "k": k,
        "wall_ms": wall,
        "ratio": ratio,
        "peak_mib": peak,
        "error": None,
    }


def test_targets_compare_with_the_reference_another_variant_or_memory() -> None:
    results = {
        "inference": [
            _row("m", "plain", None, [10, 20, 10], 1.0),
            _row("m", "ptuning_v2", 100, [10.5, 21, 10.4], 1.04),
            _row("m", "peft_prefix", 100, [11, 22, 10.2], 1.06),
        ],
        "training": [
            _row("m", "full", None, [10, 10], 1.0, peak=200.0),
            _row("m", "ptuning_v2", 20, [5, 5], 0.5, peak=150.0),
        ],
    }
    targets = (
        Target("latency", "inference", "m", 16, 128, "ptuning_v2", 100, 1.03),
        Target("vs peft", "inference", "m", 16, 128, "ptuning_v2", 100, 1.0, against=("peft_prefix", 100)),
        Target("memory", "training", "m", 16, 128, "ptuning_v2", 20, 1.0, field="peak_mib"),
        Target("not measured", "inference", "m", 16, 128, "ptuning_v2", 20, 1.02),
    )
    out = {t["target"]: t for t in evaluate_targets(results, targets)}
    assert set(out) == {"latency", "vs peft", "memory"}
    assert out["latency"]["value"] == 1.04 and not out["latency"]["met"]
    assert out["vs peft"]["value"] == pytest.approx(np.median([10.5 / 11, 21 / 22, 10.4 / 10.2]))
    assert out["vs peft"]["met"]
    assert out["memory"]["value"] == 0.75 and out["memory"]["met"]


def test_quick_bench_writes_json_markdown_and_plots(
    tiny_bert_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    argv = ["bench", "--quick", "--encoder", str(tiny_bert_dir), "--decoder", str(tiny_llama_dir)]
    assert main([*argv, "--threads", "1", "--output-dir", str(out)]) == 0
    results = json.loads((out / "bench.json").read_text())
    assert results["meta"]["command"].startswith("ptv2 bench --quick") and results["meta"]["threads"] == 1
    assert any("SEQ_CLS" in note for note in results["meta"]["notes"])

    inference = results["inference"]
    encoder = {(r["variant"], r["k"]): r for r in inference if r["model"] == str(tiny_bert_dir)}
    assert set(encoder) == {("plain", None), ("ptuning_v2", 0), ("ptuning_v2", 4), ("peft_prefix", 4)}
    plain = np.asarray(encoder[("plain", None)]["wall_ms"])
    for key in (("ptuning_v2", 0), ("ptuning_v2", 4), ("peft_prefix", 4)):  # medians of per-round ratios
        assert encoder[key]["ratio"] == pytest.approx(np.median(np.asarray(encoder[key]["wall_ms"]) / plain))
    for row in inference:
        assert row["error"] is None
        assert len(row["wall_ms"]) == 3 and len(row["cpu_ms"]) == 3
        assert row["latency_p50_ms"] <= row["latency_p90_ms"]
        assert row["tokens_per_s"] == pytest.approx(row["examples_per_s"] * 16)
        assert row["peak_mib"] > row["weights_mib"] > 0
        assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]

    training = {(r["model"], r["variant"], r["k"]): r for r in results["training"]}
    bert = str(tiny_bert_dir)
    assert {key[1:] for key in training if key[0] == bert} == {
        ("full", None),
        ("lora", None),
        ("ptuning_v2", 4),
        ("ptuning_v2_eval_backbone", 4),
        ("peft_prefix", 4),
    }
    # 2 layers x 4 tokens x (key + value of hidden 32), plus the 2-class head
    assert training[(bert, "ptuning_v2", 4)]["trainable_params"] == 2 * 4 * 64 + 32 * 2 + 2
    full = np.asarray(training[(bert, "full", None)]["wall_ms"])
    prompted = training[(bert, "ptuning_v2", 4)]
    assert prompted["ratio"] == pytest.approx(np.median(np.asarray(prompted["wall_ms"]) / full))
    assert training[(bert, "ptuning_v2", 4)]["peak_mib"] < training[(bert, "full", None)]["peak_mib"]

    md = (out / "bench.md").read_text()
    assert "## Inference" in md and "## Training step" in md and "ptuning_v2 k=4" in md
    for png in ("inference.png", "training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_shows_the_concatenation_only_where_there_is_a_prefix(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    argv = ["bench", "--profile", "--quick", "--encoder", str(tiny_bert_dir), "--threads", "1"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    profiles = {p["title"]: p for p in json.loads((tmp_path / "profile.json").read_text())["profiles"]}
    inference = profiles[f"inference {tiny_bert_dir} 2x16"]
    assert inference["variants"] == ["plain", "ptuning_v2 k=0", "ptuning_v2 k=4"]
    cat = inference["ms"]["aten::cat"]
    assert set(cat) == {"ptuning_v2 k=4"} and cat["ptuning_v2 k=4"] > 0  # keys and values, nothing else
    training = profiles[f"training step {tiny_bert_dir} 2x16"]
    assert training["variants"] == ["full", "ptuning_v2 k=4"]
    assert "Command: `ptv2 bench --quick --profile" in (tmp_path / "profile.md").read_text()


def test_device_dtype_and_threads_are_checked(capsys) -> None:
    assert timing.select_dtype("auto", torch.device("cpu")) == torch.float32
    assert timing.select_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert timing.select_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype must be"):
        timing.select_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert timing.select_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA device"):
            timing.select_device("cuda")
    assert main(["bench", "--quick", "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert main(["bench", "--checkpointing", "--decoder", "none"]) == 2
    assert "--checkpointing measures the decoder" in capsys.readouterr().err
    assert main(["bench", "--streams", "--stream-gap-ms", "-5"]) == 2
    assert "--stream-gap-ms must be 0 or more, got -5.0" in capsys.readouterr().err
    assert main(["bench", "--quick", "--rounds", "3"]) == 2
    assert "--rounds applies to --size-rows, --multitask" in capsys.readouterr().err
    assert main(["bench", "--multitask", "--rounds", "0"]) == 2
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err
    assert main(["bench", "--distinct-tasks", "--distinct-counts", "2", "32"]) == 2
    assert "--distinct-counts must include 1 and go up to at most 32, got [2, 32]" in capsys.readouterr().err
    assert main(["bench", "--distinct-tasks", "--distinct-counts", "1", "64"]) == 2


def test_bfloat16_path_runs_every_variant(tiny_bert_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The GPU configuration (bf16 weights and prompts), exercised on the CPU."""
    argv = ["bench", "--quick", "--only", "inference", "--dtype", "bfloat16", "--threads", "1"]
    models = ["--encoder", str(tiny_bert_dir), "--decoder", str(tiny_llama_dir)]
    assert main([*argv, *models, "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["meta"]["dtype"] == "bfloat16"
    assert results["training"] == []
    assert len(results["inference"]) == 7
    assert all(r["error"] is None and r["ratio"] > 0 for r in results["inference"])


def test_encoder_only_bench_on_mpnet_records_that_peft_prefix_does_nothing_there(
    tiny_mpnet_dir: Path, tmp_path: Path
) -> None:
    """``--decoder none`` runs the encoder cases only; MPNet drops PEFT's past_key_values unread, so its
    PEFT prefix rows would time the plain model: they are failures with the reason instead."""
    out = tmp_path / "bench"
    argv = ["bench", "--quick", "--encoder", str(tiny_mpnet_dir), "--decoder", "none", "--threads", "1"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    results = json.loads((out / "bench.json").read_text())
    rows = results["inference"] + results["training"]
    assert {row["model"] for row in rows} == {str(tiny_mpnet_dir)}
    failed = {(row["variant"], row["error"]) for row in rows if row["error"]}
    assert {variant for variant, _ in failed} == {"peft_prefix"} and len(failed) == 1
    assert "PEFT's prefix has no effect on MPNetModel" in next(iter(failed))[1]
    trained = {row["variant"] for row in results["training"] if not row["error"]}
    assert {"full", "lora", "ptuning_v2"} <= trained


def test_size_rows_measure_the_cost_tables_encoder_cases(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["bench", "--size-rows", "--encoder", str(tiny_bert_dir), "--decoder", "none", "--threads", "1"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["meta"]["command"].startswith("ptv2 bench --size-rows")
    inference = {(r["variant"], r["k"], r["batch"], r["seq_len"]) for r in results["inference"]}
    assert inference == {("plain", None, 16, 128), ("ptuning_v2", 20, 16, 128), ("ptuning_v2", 100, 16, 128)}
    training = {(r["variant"], r["k"]) for r in results["training"]}
    assert {("full", None), ("ptuning_v2", 20)} <= training
    assert all(len(r["wall_ms"]) == 8 for r in results["inference"])
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1073741824")  # recorded, not applied
    assert main([*argv, "--only", "inference", "--rounds", "3", "--output-dir", str(tmp_path / "more")]) == 0
    results = json.loads((tmp_path / "more" / "bench.json").read_text())
    assert "--rounds 3" in results["meta"]["command"]
    assert results["meta"]["allocator"] == "glibc.malloc.trim_threshold=1073741824"
    assert "allocator: glibc.malloc.trim_threshold=1073741824" in (tmp_path / "more" / "bench.md").read_text()
    assert all(len(r["wall_ms"]) == 3 for r in results["inference"])
