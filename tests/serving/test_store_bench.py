"""``ptv2 serve-bench --store-tasks N``: the store-scale load test on the tiny tasks (a small store, few
requests): the store it builds, its three traffic shapes, every answer checked, JSON and markdown."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ptuning_v2.cli.main import main
from ptuning_v2.serving.store import PromptStore
from ptuning_v2.serving.store_bench import build_store, traffic


def test_build_store_copies_the_checkpoints_under_many_names(tmp_path: Path, checkpoints) -> None:
    copies = build_store(tmp_path / "store", {k: str(v) for k, v in checkpoints.items()}, 205)
    assert list(copies)[:2] == ["ns-00/task-0000", "ns-00/task-0001"] and copies["ns-02/task-0203"] == "ner"
    assert PromptStore(tmp_path / "store").names() == sorted(copies)


def test_traffic_shapes() -> None:
    names = [f"t{i}" for i in range(1000)]
    hot = names[:100]
    rng = random.Random(0)
    assert set(traffic("all_hot", names, hot, 2000, rng, 1.1)) <= set(hot)
    uniform = traffic("uniform", names, hot, 20000, rng, 1.1)
    assert len(set(uniform)) > 990
    zipf = traffic("zipf", names, hot, 20000, rng, 1.1)
    counts = sorted((zipf.count(n) for n in set(zipf)), reverse=True)
    top100 = sum(counts[:100]) / len(zipf)  # Zipf s = 1.1 over 1000: the 100 most popular take 77%
    assert 0.72 < top100 < 0.82 and counts[0] > 10 * counts[99]


def test_store_bench_on_a_small_store(tmp_path: Path, checkpoints, capsys) -> None:
    out = tmp_path / "out"
    args = ["serve-bench", "--prompts", *(str(checkpoints[n]) for n in ("sentiment", "topic", "ner"))]
    args += ["--store-tasks", "12", "--max-loaded-tasks", "4", "--clients", "4", "--requests", "48"]
    args += ["--inputs-per-task", "4", "--rounds", "2", "--output-dir", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["all_correct"] is True
    report = json.loads((out / "store.json").read_text())
    assert list(report["shapes"]) == ["all_hot", "zipf", "uniform"]
    hot, uniform = report["shapes"]["all_hot"], report["shapes"]["uniform"]
    assert hot["answered"] == 2 * 48 and hot["wrong"] == hot["lost"] == 0  # two rounds
    assert len(hot["throughput_each_round"]) == len(report["zipf_vs_all_hot_each_round"]) == 2
    each = report["zipf_vs_all_hot_each_round"]
    assert report["zipf_vs_all_hot_throughput"] == round(sum(each) / 2, 2)  # the median of two
    assert hot["hit_rate"] == 1.0 and hot["cold_requests"] == 0 and hot["loads"] == 0
    assert uniform["hit_rate"] < 1 and uniform["cold_requests"] > 0 and uniform["evictions"] > 0
    assert uniform["cold_latency_ms"]["p50"] > 0 and uniform["server_rss_mb"] > 0
    rss_each_round = uniform["server_rss_each_round_mb"]
    assert len(rss_each_round) == 2 and rss_each_round[-1] == uniform["server_rss_mb"]
    assert report["rss_one_loaded_mb"] > 0 and report["zipf_vs_all_hot_throughput"] > 0
    markdown = (out / "store.md").read_text()
    assert "12 tasks, each a copy of one of the 3 checkpoint(s)" in markdown and "| zipf |" in markdown
