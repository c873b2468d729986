"""Does a mixed-task batch cost more when its rows come from more tasks?

One batch of real texts is answered by ``MultiPromptModel.run`` (prompts and heads) with its rows drawn
from 1, 2, 4, ... distinct tasks, and, in the same rounds, by the untouched backbone on the same rows
(the limit on any hardware) and by PEFT's mixed-adapter LoRA batch (``adapter_names=[...]``, one adapter
per task). Every variant is timed once per round in shuffled order, each call right beside a call of the
plain backbone (``timing.paired``); a variant's cost is the median over rounds of its time divided by
that plain call's time. The targets are a few percent, under the machine's drift over a round, so a second
copy of the plain backbone is timed the same way: its ratio is what the noise alone reads. Each median comes
with a 95 % interval, and the backbone with the most tasks' prompts gathered before the call (no heads) is
timed too: the mechanism alone, against which the whole path's own share shows.
"""

from __future__ import annotations

import resource
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ptuning_v2.benchmarks.multitask import random_checkpoint
from ptuning_v2.benchmarks.timing import allocator_setting, median_interval, paired, stats_of_ratios
from ptuning_v2.data import load_builtin
from ptuning_v2.injection.prefix import PROMPTS_KWARG
from ptuning_v2.models import load_backbone
from ptuning_v2.serving.multi_prompt import MultiPromptModel
from ptuning_v2.tasks.base import encoder_inputs
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

DISTINCT = (1, 2, 4, 8, 16, 32)


@dataclass
class DistinctTasksResult:
    model: str
    rows: int
    tokens: int
    """Padded length of the batch (real texts, padded to the longest)."""
    prompt_length: int
    lora_rank: int
    rounds: int
    threads: int
    backbone_ms: float
    """Median time of the plain backbone on the batch."""
    page_faults: int
    """Minor page faults per plain call, after the rounds. glibc's defaults give blocks over its mmap
    threshold back to the system when freed, so every pass faults its activations in again; that time
    adds to the plain call and to the variants alike, and shrinks their ratios (docs/multi_prompt.md)."""
    allocator: str
    """``GLIBC_TUNABLES`` as the run had it (how glibc's malloc was set), or ``glibc defaults``."""
    ptuning_v2: dict[int, float]
    """Distinct tasks -> median per-round ratio of ``MultiPromptModel.run`` (prompts and heads) / plain."""
    ptuning_v2_quartiles: dict[int, tuple[float, float]]
    """Distinct tasks -> first and third quartiles of those ratios (the machine's noise)."""
    ptuning_v2_interval: dict[int, tuple[float, float]]
    """Distinct tasks -> 95 % interval of the median ratio (``timing.median_interval``)."""
    lora: dict[int, float]
    """Distinct tasks -> median per-round ratio of PEFT's mixed-adapter LoRA batch / plain."""
    ptuning_v2_most_over_one: float
    """Ratio at the most distinct tasks over the ratio at one task."""
    ptuning_v2_most_over_one_interval: tuple[float, float]
    """95 % interval of the median of the same quotient taken round by round."""
    prompts_alone: float
    """Median per-round ratio of the backbone with the most tasks' prompts gathered before the call, no heads
    (the mechanism: attention over the prompts and their joins) / plain."""
    prompts_alone_interval: tuple[float, float]
    control: float
    """Median per-round ratio of a second copy of the plain backbone / plain: 1 but for the noise."""
    control_quartiles: tuple[float, float]
    control_interval: tuple[float, float]
    command: str
    ratios: dict[str, list[float]]
    """Every timed variant's ratio to the plain call beside it, round by round: to pool or re-read runs."""


def page_faults(fn: Callable[[], Any]) -> int:
    """Minor page faults of this process while ``fn`` runs."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def row_tasks(names: list[str], rows: int, distinct: int) -> list[str]:
    """``rows`` task names cycling over the first ``distinct`` names: every task gets rows/distinct rows."""
    return [names[i % distinct] for i in range(rows)]


def lora_model(model: str, names: list[str], rank: int, device: torch.device) -> PeftModel:
    """The backbone with one LoRA adapter per task on query and value; B is random (not PEFT's zero), so the
    adapters do real work."""
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], init_lora_weights=False
    )
    peft_model = get_peft_model(load_backbone(model, "encoder"), config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    return peft_model.to(device).eval()


def run_distinct_tasks(
    model: str,
    rows: int,
    prompt_length: int,
    max_length: int,
    lora_rank: int,
    rounds: int,
    threads: int,
    command: str,
    device: torch.device,
    distinct: tuple[int, ...] = DISTINCT,
) -> DistinctTasksResult:
    names = [f"task{i:02d}" for i in range(max(distinct))]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {
            name: random_checkpoint(
                model, Path(tmp) / name, "classification", {"num_virtual_tokens": prompt_length},
                {"labels": [f"label{j}" for j in range(2 + i % 5)]},
            )
            for i, name in enumerate(names)
        }  # fmt: skip
        multi = MultiPromptModel.from_checkpoints(checkpoints, device=device)
    texts = [str(t) for t in load_builtin("rotten_tomatoes")["test"]["text"][:rows]]
    tokens = multi.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {name: tensor.to(multi.device) for name, tensor in tokens.items()}
    plain, second = (load_backbone(model, "encoder").to(multi.device).eval() for _ in range(2))
    lora = lora_model(model, names, lora_rank, multi.device)

    inputs = {key: batch[key] for key in encoder_inputs(batch)}
    rows_of_most = row_tasks(names, rows, max(distinct))
    per_row, masks = multi.bank.gather(rows_of_most)
    own = {slot: (keys.clone(), values.clone()) for slot, (keys, values) in per_row.items()}  # not reused
    prepared = multi.injector.deliver(own, masks)
    fns: dict[str, Callable[[], Any]] = {
        "control": lambda: second(**batch),
        "prompts_alone": lambda: multi.backbone(**inputs, **{PROMPTS_KWARG: prepared}),
    }
    for d in distinct:
        tasks = row_tasks(names, rows, d)
        fns[f"ptuning_v2/{d}"] = lambda tasks=tasks: multi.run(batch, tasks)
        fns[f"lora/{d}"] = lambda tasks=tasks: lora(**batch, adapter_names=tasks)
    with torch.inference_mode():
        pairs = paired(lambda: plain(**batch), fns, rounds, warmup=2, device=multi.device)
    ratios = {name: [own.wall / ref.wall for ref, own in runs] for name, runs in pairs.items()}
    stats = {name: stats_of_ratios(np.asarray(values)) for name, values in ratios.items()}
    most_over_one = np.asarray(ratios[f"ptuning_v2/{max(distinct)}"]) / ratios[f"ptuning_v2/{min(distinct)}"]
    plain_walls = sorted(ref.wall for runs in pairs.values() for ref, _ in runs)
    with torch.inference_mode():
        faults = [page_faults(lambda: plain(**batch)) for _ in range(5)]

    def ratio(name: str) -> float:
        return round(stats[name].median, 4)

    def interval(name: str) -> tuple[float, float]:
        return round(stats[name].low, 4), round(stats[name].high, 4)

    ptv2 = {d: ratio(f"ptuning_v2/{d}") for d in distinct}
    return DistinctTasksResult(
        model=model,
        rows=rows,
        tokens=int(batch["input_ids"].shape[1]),
        prompt_length=prompt_length,
        lora_rank=lora_rank,
        rounds=rounds,
        threads=threads,
        backbone_ms=round(plain_walls[len(plain_walls) // 2] * 1e3, 2),
        page_faults=sorted(faults)[2],
        allocator=allocator_setting(),
        ptuning_v2=ptv2,
        ptuning_v2_quartiles={
            d: (round(stats[f"ptuning_v2/{d}"].q1, 4), round(stats[f"ptuning_v2/{d}"].q3, 4))
            for d in distinct
        },
        ptuning_v2_interval={d: interval(f"ptuning_v2/{d}") for d in distinct},
        lora={d: ratio(f"lora/{d}") for d in distinct},
        ptuning_v2_most_over_one=round(ptv2[max(distinct)] / ptv2[min(distinct)], 4),
        ptuning_v2_most_over_one_interval=tuple(round(b, 4) for b in median_interval(most_over_one)),
        prompts_alone=ratio("prompts_alone"),
        prompts_alone_interval=interval("prompts_alone"),
        control=ratio("control"),
        control_quartiles=(round(stats["control"].q1, 4), round(stats["control"].q3, 4)),
        control_interval=interval("control"),
        command=command,
        ratios={name: [round(r, 5) for r in values] for name, values in ratios.items()},
    )


def markdown(result: DistinctTasksResult) -> str:
    most = max(result.ptuning_v2)
    return "\n".join(
        [
            f"# Distinct tasks per batch: {result.model}",
            "",
            f"Command: `{result.command}`",
            "",
            f"One batch of {result.rows} real Rotten Tomatoes test texts ({result.tokens} tokens after padding), "
            f"its rows spread evenly over 1 to {most} tasks. P-Tuning v2: `MultiPromptModel.run`, k = "
            f"{result.prompt_length} at every layer, the classification heads of all tasks as one product. LoRA: "
            f"PEFT's mixed-adapter batch (`adapter_names=[...]`), rank {result.lora_rank} on query and value, "
            f"one adapter per task. Time / the plain backbone on the same rows, each call timed right beside a "
            f"plain one (median of those ratios over {result.rounds} rounds, with their quartiles; "
            f"{result.threads} CPU thread(s)); the plain backbone took {result.backbone_ms:.1f} ms per batch, "
            f"with {result.page_faults} minor page faults ({result.allocator}).",
            "",
            "| distinct tasks in the batch | P-Tuning v2 (prompts + heads) / plain | quartiles "
            "| 95 % interval of the median | PEFT mixed LoRA / plain |",
            "|---|---|---|---|---|",
            *(
                f"| {d} | {result.ptuning_v2[d]:.3f} | {q1:.3f} - {q3:.3f} | {low:.3f} - {high:.3f} "
                f"| {result.lora[d]:.3f} |"
                for (d, (q1, q3)), (low, high) in zip(
                    result.ptuning_v2_quartiles.items(), result.ptuning_v2_interval.values(), strict=True
                )
            ),
            "",
            f"At {most} distinct tasks P-Tuning v2 costs **{result.ptuning_v2[most]:.3f}x** the plain backbone "
            f"(target <= 1.05) and LoRA {result.lora[most]:.3f}x; {most} tasks cost "
            f"**{result.ptuning_v2_most_over_one:.3f}x** one task (target <= 1.03; round by round, "
            f"{_interval(result.ptuning_v2_most_over_one_interval)}). The backbone with those "
            f"{most} tasks' prompts gathered before the call and no heads (the mechanism alone) costs "
            f"{result.prompts_alone:.3f}x ({_interval(result.prompts_alone_interval)}). A second copy of the "
            f"plain backbone, timed the same way, reads {result.control:.3f}x (quartiles "
            f"{result.control_quartiles[0]:.3f} - {result.control_quartiles[1]:.3f}; "
            f"{_interval(result.control_interval)}): what the machine's noise alone gives.",
            "",
        ]
    )


def _interval(bounds: tuple[float, float]) -> str:
    return f"95 % interval {bounds[0]:.3f} - {bounds[1]:.3f}"


def write(result: DistinctTasksResult, output_dir: Path) -> None:
    write_json_atomic(output_dir / "distinct_tasks.json", asdict(result))
    write_text_atomic(output_dir / "distinct_tasks.md", markdown(result))
