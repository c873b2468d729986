"""The load test's offline mode: the server's requests done in one process, every answer checked, so the
server's throughput has a fair reference (``ptv2 serve-bench``'s ``server_vs_offline``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptuning_v2.checkpoint import TrainedCheckpoint
from ptuning_v2.cli.main import main
from ptuning_v2.models import load_tokenizer
from ptuning_v2.serving.loadtest import Offline, combined, expected_answers, markdown, sample_inputs


def test_offline_mode_answers_every_request_right_in_sorted_batches(checkpoints: dict[str, Path]) -> None:
    paths = {name: str(checkpoints[name]) for name in ("sentiment", "ner")}
    inputs = {name: sample_inputs(path, 4) for name, path in paths.items()}
    jobs = [(name, i) for i in range(4) for name in paths] * 3  # 24 requests, each input three times
    reference = Offline(paths, inputs, expected_answers(paths, inputs), batch_size=5)
    result = reference.run(jobs)
    assert result["answered"] == 24 and result["wrong"] == result["lost"] == 0
    assert result["batches"] == 5 and result["throughput_rps"] > 0  # ceil(24 / 5) passes
    in_turn = reference.run(jobs, group=4)
    assert in_turn["answered"] == 24 and in_turn["wrong"] == 0 and in_turn["batches"] == 6  # 24 / 4
    threads = torch.get_num_threads()
    side_by_side = reference.run(jobs, group=4, threads=2)  # as the server's two model threads
    assert side_by_side["answered"] == 24 and side_by_side["wrong"] == 0 and side_by_side["batches"] == 6
    assert torch.get_num_threads() == threads  # torch's threads given back
    reference.expected = {name: [{"different": True}] * 4 for name in paths}  # every answer is checked
    assert reference.run(jobs)["wrong"] == 24
    reference.close()


def test_runs_of_one_mode_combine_into_one() -> None:
    run = {"requests": 8, "answered": 8, "seconds": 0.1, "batches": 2, "wrong": 0, "lost": 0}
    run |= {"duplicated_or_swapped": 0, "failures": [], "throughput_rps": 80.0}
    total = combined([run, {**run, "seconds": 0.3, "throughput_rps": 26.67}])
    assert total["answered"] == 16 and total["throughput_rps"] == 40.0 and total["requests_per_batch"] == 4
    assert total["runs_rps"] == [80.0, 26.67]


def test_report_compares_the_server_with_the_offline_mode() -> None:
    mode = {"answered": 8, "requests": 8, "wrong": 0, "lost": 0, "duplicated_or_swapped": 0}
    served = {
        **mode,
        "throughput_rps": 90.0,
        "latency_ms": {"p50": 10.0, "p99": 20.0},
        "requests_per_batch": 4,
        "runs_rps": [90.0],
    }
    report = {
        "command": "ptv2 serve-bench",
        "clients": 16,
        "requests": 8,
        "rounds": 1,
        "tasks": {"a": "x"},
        "cpu_count": 2,
        "modes": {
            "offline": {**mode, "throughput_rps": 100.0, "requests_per_batch": 8, "runs_rps": [98.0, 102.0]},
            "offline_server_batches": {
                **mode,
                "throughput_rps": 80.0,
                "requests_per_batch": 4,
                "runs_rps": [80.0],
            },
            "batching": served,
            "no_batching": {**served, "throughput_rps": 50.0, "runs_rps": [50.0]},
        },
        "throughput_ratio": 1.8,
        "p99_ratio": 1.0,
        "server_vs_offline": 0.9,
        "server_vs_offline_parts": [0.9],
        "server_vs_offline_server_batches": 1.125,
        "all_correct": True,
    }
    text = markdown(report)
    assert "| offline | 8 / 8 | 0 / 0 / 0 | 100.0 | - | - | 8.00 |" in text
    assert (
        "**0.900x** the offline throughput" in text
        and "**1.125x** the offline throughput in its" in text
        and "offline 98.0, 102.0;" in text
    )


def test_inputs_of_a_fixed_length(checkpoints: dict[str, Path]) -> None:
    texts = sample_inputs(checkpoints["sentiment"], 4, tokens=6)
    tokenizer = load_tokenizer(TrainedCheckpoint.read(checkpoints["sentiment"]).run().model)
    assert [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts] == [6] * 4
    with pytest.raises(ValueError, match="takes at most 14 tokens of text .train.max_length=16."):
        sample_inputs(checkpoints["sentiment"], 4, tokens=100)


def test_load_test_on_the_tiny_tasks(tmp_path: Path, checkpoints: dict[str, Path], capsys) -> None:
    args = ["serve-bench", "--prompts", str(checkpoints["sentiment"]), str(checkpoints["ner"])]
    args += ["--clients", "4", "--requests", "16", "--inputs-per-task", "4", "--output-dir", str(tmp_path)]
    assert main([*args, "--rounds", "0"]) == 2  # checked before anything starts
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["all_correct"] is True and summary["server_vs_offline"] > 0
    report = json.loads((tmp_path / "load.json").read_text())
    runs = {mode: len(m["runs_rps"]) for mode, m in report["modes"].items()}
    assert runs == {"offline": 4, "offline_server_batches": 3, "batching": 3, "no_batching": 1}
    assert report["modes"]["batching"]["answered"] == 48 and len(report["server_vs_offline_parts"]) == 3
    assert "| offline server batches |" in (tmp_path / "load.md").read_text()
