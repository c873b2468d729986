"""The distinct-tasks benchmark times fair work: its LoRA batch is really mixed, its rows really spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ptuning_v2.benchmarks import distinct_tasks
from ptuning_v2.benchmarks.distinct_tasks import DistinctTasksResult, lora_model, markdown, row_tasks
from ptuning_v2.benchmarks.timing import paired


def test_rows_spread_evenly_over_the_distinct_tasks() -> None:
    names = [f"t{i}" for i in range(8)]
    tasks = row_tasks(names, 32, 4)
    assert len(tasks) == 32 and {tasks.count(n) for n in names[:4]} == {8} and set(tasks) == set(names[:4])


def test_mixed_lora_batch_gives_each_row_its_own_adapter(tiny_bert_dir: Path) -> None:
    names = ["a", "b", "c"]
    torch.manual_seed(0)
    model = lora_model(str(tiny_bert_dir), names, rank=4, device=torch.device("cpu"))
    ids = torch.randint(5, 90, (3, 7))
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=names).last_hidden_state
        for i, name in enumerate(names):
            model.set_adapter(name)
            alone = model(input_ids=ids[i : i + 1]).last_hidden_state[0]
            torch.testing.assert_close(mixed[i], alone, atol=1e-5, rtol=0)
        assert not torch.allclose(mixed[0], mixed[1])  # the adapters are not PEFT's no-op initialisation


def test_report_states_the_targets_from_the_measured_figures() -> None:
    result = DistinctTasksResult(
        "minilm", 32, 43, 32, 8, 20, 2, 41.5, 12000, "glibc defaults", {1: 1.02, 32: 1.04}, {1: (1.0, 1.03), 32: (1.02, 1.06)},
        {1: (1.01, 1.03), 32: (1.03, 1.049)}, {1: 1.05, 32: 1.14}, 1.0196, (1.01, 1.025), 1.031, (1.02, 1.04),
        1.003, (0.98, 1.02), (0.99, 1.01), "ptv2 bench", {"control": [1.0, 1.006]},
    )  # fmt: skip
    text = markdown(result)
    assert "| 32 | 1.040 | 1.020 - 1.060 | 1.030 - 1.049 | 1.140 |" in text
    assert (
        "**1.040x** the plain backbone" in text
        and "41.5 ms per batch, with 12000 minor page faults (glibc" in text
    )
    assert "**1.020x** one task (target <= 1.03; round by round, 95 % interval 1.010 - 1.025)" in text
    assert "(the mechanism alone) costs 1.031x (95 % interval 1.020 - 1.040)" in text
    assert "reads 1.003x (quartiles 0.980 - 1.020; 95 % interval 0.990 - 1.010)" in text


def test_every_variant_and_the_control_are_timed(tiny_bert_dir: Path, monkeypatch) -> None:
    texts = {"test": {"text": ["a good film", "bad", "not bad at all, really", "fine"]}}
    monkeypatch.setattr(distinct_tasks, "load_builtin", lambda name: texts)
    result = distinct_tasks.run_distinct_tasks(
        str(tiny_bert_dir), rows=4, prompt_length=3, max_length=16, lora_rank=2, rounds=2, threads=1,
        command="ptv2 bench", device=torch.device("cpu"), distinct=(1, 2, 4),
    )  # fmt: skip
    assert set(result.ptuning_v2) == set(result.lora) == {1, 2, 4} and result.rounds == 2
    assert all(r > 0 for r in [*result.ptuning_v2.values(), *result.lora.values(), result.control])
    assert result.prompts_alone > 0 and set(result.ptuning_v2_interval) == {1, 2, 4}
    for low, high in [*result.ptuning_v2_interval.values(), result.control_interval]:
        assert 0 < low <= high
    assert {name: len(values) for name, values in result.ratios.items()} == {
        name: 2 for name in ["control", "prompts_alone", "ptuning_v2/1", "ptuning_v2/2", "ptuning_v2/4", "lora/1",
                             "lora/2", "lora/4"]
    }  # fmt: skip
    assert result.ptuning_v2[4] == round(float(np.median(result.ratios["ptuning_v2/4"])), 4)
    assert result.page_faults >= 0 and result.allocator
    assert result.tokens >= 7 and result.backbone_ms > 0  # the longest text: five words, [CLS] and [SEP]


def test_paired_timing_puts_every_call_beside_a_reference_call() -> None:
    order: list[str] = []
    pairs = paired(
        lambda: order.append("ref"),
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        rounds=3,
        warmup=1,
        device=torch.device("cpu"),
    )
    assert {name: len(runs) for name, runs in pairs.items()} == {"a": 3, "b": 3}
    assert len(order) == 16 and all(sorted(order[i : i + 2])[1] == "ref" for i in range(0, 16, 2))
    assert {order[i] for i in range(0, 16, 2)} == {"ref", "a", "b"}  # either one may go first
