"""The load test's offline mode: the server's requests done in one process, every answer checked, so the
server's throughput has a fair reference (``ptv2 serve-bench``'s ``server_vs_offline``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptuning_v2.checkpoint import TrainedCheckpoint
from ptuning_v2.models import load_tokenizer
from ptuning_v2.serving.loadtest import expected_answers, markdown, offline, sample_inputs


def test_offline_mode_answers_every_request_right_in_sorted_batches(checkpoints: dict[str, Path]) -> None:
    paths = {name: str(checkpoints[name]) for name in ("sentiment", "ner")}
    inputs = {name: sample_inputs(path, 4) for name, path in paths.items()}
    expected = expected_answers(paths, inputs)
    jobs = [(name, i) for i in range(4) for name in paths] * 3  # 24 requests, each input three times
    result = offline(paths, jobs, inputs, expected, batch_size=5)
    assert result["answered"] == 24 and result["wrong"] == result["lost"] == 0
    assert result["batches"] == 5 and result["throughput_rps"] > 0  # ceil(24 / 5) passes
    in_turn = offline(paths, jobs, inputs, expected, batch_size=5, group=4)
    assert in_turn["answered"] == 24 and in_turn["wrong"] == 0 and in_turn["batches"] == 6  # 24 / 4
    wrong = {name: [{"different": True}] * 4 for name in paths}  # what every answer is checked against
    assert offline(paths, jobs, inputs, wrong, batch_size=5)["wrong"] == 24


def test_report_compares_the_server_with_the_offline_mode() -> None:
    mode = {"answered": 8, "requests": 8, "wrong": 0, "lost": 0, "duplicated_or_swapped": 0}
    served = {
        **mode,
        "throughput_rps": 90.0,
        "latency_ms": {"p50": 10.0, "p99": 20.0},
        "requests_per_batch": 4,
    }
    report = {
        "command": "ptv2 serve-bench",
        "clients": 16,
        "requests": 8,
        "tasks": {"a": "x"},
        "cpu_count": 2,
        "modes": {
            "offline": {**mode, "throughput_rps": 100.0, "requests_per_batch": 8, "runs_rps": [98.0, 102.0]},
            "offline_server_batches": {**mode, "throughput_rps": 80.0, "requests_per_batch": 4},
            "batching": served,
            "no_batching": {**served, "throughput_rps": 50.0},
        },
        "throughput_ratio": 1.8,
        "p99_ratio": 1.0,
        "server_vs_offline": 0.9,
        "server_vs_offline_server_batches": 1.125,
        "all_correct": True,
    }
    text = markdown(report)
    assert "| offline | 8 / 8 | 0 / 0 / 0 | 100.0 | - | - | 8.00 |" in text
    assert (
        "**0.900x** the offline throughput" in text
        and "**1.125x** the offline throughput in its" in text
        and "98.0 and 102.0 req/s" in text
    )


def test_inputs_of_a_fixed_length(checkpoints: dict[str, Path]) -> None:
    texts = sample_inputs(checkpoints["sentiment"], 4, tokens=6)
    tokenizer = load_tokenizer(TrainedCheckpoint.read(checkpoints["sentiment"]).run().model)
    assert [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts] == [6] * 4
    with pytest.raises(ValueError, match="takes at most 14 tokens of text .train.max_length=16."):
        sample_inputs(checkpoints["sentiment"], 4, tokens=100)
