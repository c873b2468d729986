"""Serving many tasks from one backbone: mixed-task batches against grouping by task and one request at a
time, and the memory of one backbone plus N prompts against N fine-tuned copies.

Requests are real texts (Rotten Tomatoes test split) spread round-robin over the tasks, as they might
arrive at a server. The three ways of serving them are timed round by round in one process (see
``timing.interleaved``); what is compared is the median over rounds of the per-round ratios.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ptuning_v2.benchmarks.timing import MIB, interleaved, module_bytes, ratio_stats, tensor_bytes
from ptuning_v2.checkpoint import save_checkpoint
from ptuning_v2.config import RunConfig
from ptuning_v2.data import load_builtin
from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
from ptuning_v2.serving.multi_prompt import MultiPromptModel
from ptuning_v2.tasks.base import get_task
from ptuning_v2.trained.model import build_model
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

TASKS: dict[str, tuple[str, int, dict[str, Any]]] = {
    # name: (task type, prompt length, task state); prompt values do not change the cost
    "sentiment": ("classification", 16, {"labels": ["neg", "pos"]}),
    "question_type": ("classification", 16, {"labels": ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]}),
    "topic": ("classification", 8, {"labels": ["a", "b", "c", "d"]}),
    "entities": ("ner", 32, {"labels": ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG",
                                        "I-PER", "O"], "scheme": "IOB2"}),
}  # fmt: skip


def random_checkpoint(
    model: str,
    directory: Path,
    task: str,
    prompt: dict[str, Any],
    state: dict[str, Any],
    task_options: dict[str, Any] | None = None,
    head: dict[str, Any] | None = None,
) -> Path:
    """A checkpoint folder as training writes it, with randomly initialised prompt and head (seeded by the
    caller's torch seed): what serving costs does not depend on trained values."""
    run = RunConfig.from_dict(
        {
            "model": model,
            "task": task,
            "prompt": prompt,
            "task_options": task_options or {},
            "head": head or {},
        }
    )
    task_obj = get_task(task)(run, load_tokenizer(model))
    task_obj.load_state(state)
    backbone = load_backbone(model, task_obj.backbone_kind)
    trained = build_model(run, task_obj, backbone, task_obj.tokenizer)
    save_checkpoint(
        directory, trained, run_config=run.to_dict(), task_state=task_obj.state(),
        backbone_fingerprint=backbone_fingerprint(backbone),
    )  # fmt: skip
    return directory


@dataclass
class MultitaskResult:
    model: str
    tasks: dict[str, int]
    """Task name -> prompt length."""
    requests: int
    batch_size: int
    max_length: int
    rounds: int
    requests_per_second: dict[str, float]
    """Median throughput of each way of serving: ``mixed``, ``grouped``, ``one_at_a_time``."""
    mixed_over_one_at_a_time: float
    mixed_over_grouped: float
    """Throughput ratios: the median over rounds of per-round ratios."""
    backbone_mib: float
    prompts_mib: dict[int, float]
    """N -> memory of the backbone plus N task prompts and heads."""
    finetuned_mib: dict[int, float]
    """N -> memory of N separately fine-tuned copies of the backbone with their heads."""
    memory_ratio_10_prompts: float
    memory_ratio_10_finetuned: float
    command: str


def serve_functions(
    multi: MultiPromptModel, requests: list[tuple[str, str]], batch_size: int, max_length: int
) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """The three ways of answering all ``requests`` (task name, text); each returns every request's logits,
    in request order. Both batched ways sort their requests by length before cutting batches (as a
    serving batcher would), so that padding does not decide the comparison."""

    def encoded(texts: list[str]) -> list[dict[str, list[int]]]:
        enc = multi.tokenizer(texts, truncation=True, max_length=max_length)
        return [{k: enc[k][i] for k in enc} for i in range(len(texts))]

    def on_device(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: tensor.to(multi.device) for name, tensor in batch.items()}

    def encoded_one(text: str) -> dict[str, torch.Tensor]:
        return on_device(multi.tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt"))

    def batched(indices: list[int], run: Callable[[dict, list[int]], list[torch.Tensor]]) -> dict[int, Any]:
        features = encoded([requests[i][1] for i in indices])
        order = sorted(range(len(indices)), key=lambda j: len(features[j]["input_ids"]))
        out = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = on_device(multi.tokenizer.pad([features[j] for j in chunk], return_tensors="pt"))
            out.update(zip([indices[j] for j in chunk], run(batch, [indices[j] for j in chunk]), strict=True))
        return out

    @torch.inference_mode()
    def one_at_a_time() -> list[torch.Tensor]:
        return [multi.tasks[task].model(encoded_one(text))["logits"][0] for task, text in requests]

    @torch.inference_mode()
    def grouped() -> list[torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for name in multi.tasks:
            mine = [i for i, (task, _) in enumerate(requests) if task == name]
            out.update(
                batched(mine, lambda batch, _, name=name: list(multi.tasks[name].model(batch)["logits"]))
            )
        return [out[i] for i in range(len(requests))]

    @torch.inference_mode()
    def mixed() -> list[torch.Tensor]:
        def run(batch: dict, rows: list[int]) -> list[torch.Tensor]:
            return [r["logits"] for r in multi.run(batch, [requests[i][0] for i in rows])]

        out = batched(list(range(len(requests))), run)
        return [out[i] for i in range(len(requests))]

    return {"mixed": mixed, "grouped": grouped, "one_at_a_time": one_at_a_time}


def run_multitask(
    model: str, per_task: int, batch_size: int, max_length: int, rounds: int, command: str
) -> MultitaskResult:
    texts = [str(t) for t in load_builtin("rotten_tomatoes")["test"]["text"]]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {
            name: random_checkpoint(model, Path(tmp) / name, task, {"num_virtual_tokens": length}, state)
            for name, (task, length, state) in TASKS.items()
        }
        multi = MultiPromptModel.from_checkpoints(checkpoints)
    names = list(TASKS)
    requests = [(names[i % len(names)], texts[i]) for i in range(per_task * len(names))]
    fns = serve_functions(multi, requests, batch_size, max_length)
    samples = interleaved(fns, rounds, warmup=1, device=multi.device)
    walls = {name: [s.wall for s in runs] for name, runs in samples.items()}
    throughput = {name: len(requests) / sorted(w)[len(w) // 2] for name, w in walls.items()}
    # throughput ratio = inverse time ratio
    over_single = 1 / ratio_stats(walls["one_at_a_time"], walls["mixed"]).median
    over_grouped = 1 / ratio_stats(walls["grouped"], walls["mixed"]).median

    backbone = module_bytes(multi.backbone)
    per_task_bytes = []
    for entry in multi.tasks.values():
        own = [p for n, p in entry.model.named_parameters() if not n.startswith("encoder.backbone.")]
        per_task_bytes.append(tensor_bytes(own))
    average = sum(per_task_bytes) / len(per_task_bytes)
    heads = average - sum(  # a fine-tuned copy keeps its head, not a prompt
        tensor_bytes(list(e.encoder.prompt.parameters())) for e in multi.tasks.values()
    ) / len(multi.tasks)
    counts = (1, 4, 10)
    return MultitaskResult(
        model=model,
        tasks={name: multi.tasks[name].prompt_length for name in names},
        requests=len(requests),
        batch_size=batch_size,
        max_length=max_length,
        rounds=rounds,
        requests_per_second={k: round(v, 1) for k, v in throughput.items()},
        mixed_over_one_at_a_time=round(over_single, 3),
        mixed_over_grouped=round(over_grouped, 3),
        backbone_mib=round(backbone / MIB, 2),
        prompts_mib={n: round((backbone + n * average) / MIB, 2) for n in counts},
        finetuned_mib={n: round(n * (backbone + heads) / MIB, 2) for n in counts},
        memory_ratio_10_prompts=round((backbone + 10 * average) / backbone, 4),
        memory_ratio_10_finetuned=round(10 * (backbone + heads) / backbone, 3),
        command=command,
    )


def markdown(result: MultitaskResult) -> str:
    tasks = ", ".join(f"{name} (k = {k})" for name, k in result.tasks.items())
    rps = result.requests_per_second
    return "\n".join(
        [
            f"# Many tasks on one backbone: {result.model}",
            "",
            f"Command: `{result.command}`",
            "",
            f"{result.requests} requests ({result.requests // len(result.tasks)} per task, round-robin over "
            f"{tasks}), real Rotten Tomatoes test texts, max length {result.max_length}, batches of "
            f"{result.batch_size}; {result.rounds} rounds, every way timed once per round in shuffled order.",
            "",
            "| way of serving | requests / s (median) |",
            "|---|---|",
            f"| mixed-task batches (one pass per batch) | {rps['mixed']:,.1f} |",
            f"| grouped by task (one task per batch) | {rps['grouped']:,.1f} |",
            f"| one request at a time | {rps['one_at_a_time']:,.1f} |",
            "",
            f"Mixed / one at a time: **{result.mixed_over_one_at_a_time:.2f}x** throughput (target >= 3); "
            f"mixed / grouped: **{result.mixed_over_grouped:.3f}x** (target >= 1); medians of per-round ratios.",
            "",
            "| tasks served | one backbone + prompts and heads (MiB) | separately fine-tuned copies (MiB) |",
            "|---|---|---|",
            *(
                f"| {n} | {result.prompts_mib[n]:,.2f} | {result.finetuned_mib[n]:,.2f} |"
                for n in result.prompts_mib
            ),
            "",
            f"Backbone alone: {result.backbone_mib:,.2f} MiB. With 10 prompts: "
            f"**{result.memory_ratio_10_prompts:.4f}x** the backbone (target <= 1.05); 10 fine-tuned copies: "
            f"{result.memory_ratio_10_finetuned:.2f}x. Parameter memory (weights of the backbone, prompts and "
            "heads; the average task's prompt and head stand for each added task).",
            "",
        ]
    )


def write(result: MultitaskResult, output_dir: Path) -> None:
    write_json_atomic(output_dir / "multitask.json", asdict(result))
    write_text_atomic(output_dir / "multitask.md", markdown(result))
