"""The serving benchmark's three ways of answering requests give the same answers (so timing them is fair)."""

from __future__ import annotations

from pathlib import Path

import torch

from ptuning_v2.benchmarks.multitask import TASKS, markdown, random_checkpoint, serve_functions
from ptuning_v2.serving.multi_prompt import MultiPromptModel


def test_mixed_grouped_and_single_requests_agree(tiny_bert_dir: Path, tmp_path: Path) -> None:
    checkpoints = {
        name: random_checkpoint(
            str(tiny_bert_dir), tmp_path / name, task, {"num_virtual_tokens": length}, state
        )
        for name, (task, length, state) in TASKS.items()
    }
    multi = MultiPromptModel.from_checkpoints(checkpoints)
    texts = ["the movie was good", "a bad plot", "john went to paris", "what a fine and very funny film"] * 3
    requests = [(list(TASKS)[i % 4], text) for i, text in enumerate(texts)]
    fns = serve_functions(multi, requests, batch_size=5, max_length=16)
    answers = {name: fn() for name, fn in fns.items()}
    for i, alone in enumerate(answers["one_at_a_time"]):
        n = alone.shape[0] if alone.dim() == 2 else None  # NER: the request's own tokens
        for way in ("mixed", "grouped"):
            torch.testing.assert_close(answers[way][i][:n], alone[:n], atol=1e-5, rtol=0)


def test_report_states_targets_from_the_measured_figures() -> None:
    from ptuning_v2.benchmarks.multitask import MultitaskResult

    result = MultitaskResult(
        "minilm", {"a": 8, "b": 16}, 128, 64, 128, 3, {"mixed": 300.0, "grouped": 290.0, "one_at_a_time": 50.0},
        6.1, 1.03, 86.7, {1: 87.0, 10: 90.0}, {1: 86.8, 10: 868.0}, 1.038, 10.01, "ptv2 bench --multitask",
    )  # fmt: skip
    text = markdown(result)
    assert (
        "**6.10x** throughput" in text
        and "**1.0380x** the backbone" in text
        and "| 10 | 90.00 | 868.00 |" in text
    )
