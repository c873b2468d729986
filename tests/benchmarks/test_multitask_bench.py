"""The serving benchmark's three ways of answering requests give the same answers (so timing them is fair)."""

from __future__ import annotations

from pathlib import Path

import torch

from ptuning_v2.benchmarks.multitask import TASKS, markdown, random_checkpoint, serve_functions
from ptuning_v2.serving.multi_prompt import MultiPromptModel


def test_mixed_grouped_and_single_requests_agree(tiny_bert_dir: Path, tmp_path: Path) -> None:
    checkpoints = {
        name: random_checkpoint(str(tiny_bert_dir), tmp_path / name, task, length, state)
        for name, (task, length, state) in TASKS.items()
    }
    multi = MultiPromptModel.from_checkpoints(checkpoints)
    texts = ["the movie was good", "a bad plot", "john went to paris", "what a fine and very funny film"] * 3
    requests = [(list(TASKS)[i % 4], text) for i, text in enumerate(texts)]
    fns = serve_functions(multi, requests, batch_size=5, max_length=16)
    mixed, single, grouped = fns["mixed"](), fns["one_at_a_time"](), fns["grouped"]()
    grouped_rows = {name: torch.cat([g for g in grouped if g.shape[-1] == len(TASKS[name][2]["labels"])])
                    for name in TASKS}  # fmt: skip
    seen = dict.fromkeys(TASKS, 0)
    for (task, _), got, alone in zip(requests, mixed, single, strict=True):
        n = alone.shape[1] if alone.dim() == 3 else None  # NER: compare the request's own tokens
        torch.testing.assert_close(got["logits"][:n], alone[0][:n], atol=1e-5, rtol=0)
        torch.testing.assert_close(grouped_rows[task][seen[task]][:n], alone[0][:n], atol=1e-5, rtol=0)
        seen[task] += 1


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
