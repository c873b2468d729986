"""The real load test: MiniLM prompts for Rotten Tomatoes, TREC-6 and CoNLL-2003 served together, 16
concurrent clients, dynamic batching on and off (``ptv2 serve-bench``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptuning_v2.cli.main import main

pytestmark = pytest.mark.slow
SHORT = ["--set", "train.max_steps=20", "--set", "train.eval_every=20", "--set", "data.max_eval_examples=50"]


def test_dynamic_batching_gains_throughput_with_every_answer_right(tmp_path: Path) -> None:
    runs = {
        "rt": ["configs/rotten_tomatoes_ptuning_v2.yaml"],
        "trec6": ["configs/rotten_tomatoes_ptuning_v2.yaml", "--set", "data.name=trec6"],
        "conll2003": ["configs/conll2003_ptuning_v2.yaml"],
    }
    for name, args in runs.items():  # in one process, though CoNLL trains in bf16 and the others do not
        train = ["train", args[0], "--output-dir", str(tmp_path / name), "--no-progress", *args[1:], *SHORT]
        assert main(train) == 0
    prompts = [str(tmp_path / name / "checkpoint") for name in runs]
    command = [
        "serve-bench",
        "--prompts",
        *prompts,
        "--requests",
        "480",
        "--output-dir",
        str(tmp_path / "load"),
    ]
    assert main(command) == 0
    report = json.loads((tmp_path / "load" / "load.json").read_text())
    assert report["all_correct"]
    for mode in report["modes"].values():
        assert mode["answered"] == 480 * len(mode["runs_rps"])
        assert mode["wrong"] == mode["lost"] == mode["duplicated_or_swapped"] == 0
    # On 2 CPU cores a MiniLM row costs about the same alone or batched, and with two model threads one
    # request at a time also runs two side by side: the committed run (results/serving/load.json) measured
    # 1.60x, single runs here 1.37x and up, so this checks for a clear gain.
    assert report["throughput_ratio"] >= 1.2
    # p99 is reported, not a target: two model threads trade some of it for throughput (the committed run:
    # 1.09x one request at a time's; `--model-threads 1` for the lowest latency), and 480 requests on two
    # shared cores put single runs anywhere from 1x to 2x.
    assert report["p99_ratio"] > 0
    # the same requests offline, as a reference (real texts of mixed lengths: 0.55x in docs/serving.md)
    assert list(report["modes"])[:2] == ["offline", "offline_server_batches"]
    assert report["server_vs_offline"] > 0.2 and len(report["modes"]["offline"]["runs_rps"]) == 4
    assert "| batching |" in (tmp_path / "load" / "load.md").read_text()
