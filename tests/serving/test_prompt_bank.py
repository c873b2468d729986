"""The prompt bank: rows of shared tables that a mixed-task batch gathers from, each prompt held once."""

from __future__ import annotations

import torch
from torch import nn

from ptuning_v2.serving.prompt_bank import PromptBank

WIDTH = 6  # keys 3, values 3


def prompts(seed: int, lengths: dict[str, int]) -> dict[str, nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return {slot: nn.Parameter(torch.randn(n, WIDTH, generator=generator)) for slot, n in lengths.items()}


def test_a_gather_is_each_rows_own_prompt_keys_then_values() -> None:
    bank, tasks = PromptBank(), {f"t{i}": prompts(i, {"self_0": 4, "self_1": 2}) for i in range(3)}
    expected = {name: {slot: p.detach().clone() for slot, p in ps.items()} for name, ps in tasks.items()}
    for name, ps in tasks.items():
        bank.put(name, ps)
    rows = ["t2", "t0", "t2", "t1"]
    per_row, masks = bank.gather(rows)
    assert masks == {}  # every row fills every slot
    for slot in ("self_0", "self_1"):
        keys, values = per_row[slot]
        torch.testing.assert_close(
            keys, torch.stack([expected[t][slot][:, :3] for t in rows]), rtol=0, atol=0
        )
        torch.testing.assert_close(
            values, torch.stack([expected[t][slot][:, 3:] for t in rows]), rtol=0, atol=0
        )


def test_shorter_and_missing_prompts_are_zero_padded_and_masked() -> None:
    bank = PromptBank()
    bank.put("long", prompts(0, {"self_0": 4, "self_1": 4}))
    bank.put("short", prompts(1, {"self_0": 2}))  # no prompt at self_1
    per_row, masks = bank.gather(["short", "long"])
    keys, _ = per_row["self_0"]
    assert keys[0, 2:].eq(0).all() and keys[0, :2].ne(0).all()
    assert masks["self_0"].tolist() == [[True, True, False, False], [True] * 4]
    assert masks["self_1"].tolist() == [[False] * 4, [True] * 4]


def test_tasks_view_their_rows_and_follow_the_table_when_it_grows() -> None:
    bank, tasks = PromptBank(), {f"t{i}": prompts(i, {"self_0": 3}) for i in range(6)}
    expected = {name: ps["self_0"].detach().clone() for name, ps in tasks.items()}
    for name, ps in tasks.items():  # the table starts with 4 rows and doubles at the fifth task
        bank.put(name, ps)
    (table,) = bank.tables.values()
    assert table.shape == (8, 3, WIDTH)
    for row, (name, ps) in enumerate(tasks.items()):
        assert ps["self_0"].data_ptr() == table[row].data_ptr()
        torch.testing.assert_close(ps["self_0"].detach(), expected[name], rtol=0, atol=0)
        assert ps["self_0"].requires_grad  # still the trainable parameter it was


def test_a_dropped_task_keeps_its_prompt_and_its_row_is_reused() -> None:
    bank, first, second = PromptBank(), prompts(0, {"self_0": 3}), prompts(1, {"self_0": 3})
    kept = first["self_0"].detach().clone()
    bank.put("first", first)
    alone = bank.prompts("first")["self_0"]
    bank.drop("first")
    bank.put("second", second)  # into the row "first" had
    assert bank.places["second"]["self_0"][1] == 0
    torch.testing.assert_close(first["self_0"].detach(), kept, rtol=0, atol=0)  # its own copy again
    torch.testing.assert_close(alone, kept, rtol=0, atol=0)  # a batch's copy is not the row
    assert "first" not in bank.places


def test_a_row_freed_while_a_copy_runs_is_not_reused_until_it_ends() -> None:
    """A batch copies its prompts without holding off loads; the rows it reads stay as they are meanwhile."""
    bank = PromptBank()
    bank.put("old", prompts(0, {"self_0": 3}))
    with bank._reading(["old"]) as (places, tables):  # a copy under way on another thread
        bank.drop("old")
        bank.put("new", prompts(1, {"self_0": 3}))
        assert bank.places["new"]["self_0"][1] == 1  # not row 0, which the copy reads
        (key, row) = places["old"]["self_0"]
        assert row == 0 and tables[key] is bank.tables[key]
    bank.put("newer", prompts(2, {"self_0": 3}))
    assert bank.places["newer"]["self_0"][1] == 0  # free again once no copy runs
