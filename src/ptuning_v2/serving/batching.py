"""Predictions for many requests of many tasks in mixed-task batches: one backbone pass for all of them.

Each request is tokenised by its own task (``Task.predict_features``), the features of every request
whose task allows it are padded together with the shared tokenizer and run in one
``MultiPromptModel.run`` pass (each row with its own prompt and head), and each request is decoded by
its own task. A request that fails (malformed input, an input too long when refused, a task removed
meanwhile) fails alone: the others of its batch are answered.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ptuning_v2.data import DataError, DataReport
from ptuning_v2.serving.multi_prompt import MultiPromptModel, TaskEntry
from ptuning_v2.tasks.base import Task, encoder_inputs
from ptuning_v2.tasks.generation import seeded


class InputTooLongError(DataError):
    """An input longer than its model takes, on a server that refuses rather than truncates."""


@dataclass
class Request:
    """One predict request: a task name and its raw inputs (already parsed as ``ptv2 predict`` parses)."""

    task: str
    inputs: list[Any]
    entry: TaskEntry | None = None
    features: list[list[dict[str, Any]]] = field(default_factory=list)
    outputs: list[list[dict[str, Any]]] = field(default_factory=list)


def featurize(entry: TaskEntry, inputs: list[Any], refuse_overlong: bool) -> list[list[dict[str, Any]]]:
    """The features of ``inputs``; with ``refuse_overlong`` an input its task would cut is an error that
    names it (the task counts every cut in its report)."""
    task = entry.task
    task.report = DataReport()
    features = task.predict_features(inputs)
    if refuse_overlong and task.report.to_dict():
        too_long = [i for i in range(len(inputs)) if cuts(task, inputs[i])]
        raise InputTooLongError(
            f"input(s) {too_long} are longer than task {entry.name!r} takes "
            f"(train.max_length={task.config.train.max_length} tokens) and this server refuses, not "
            "truncates, overlong inputs",
            record=str(too_long[0]) if too_long else None,
        )
    return features


def cuts(task: Task, item: Any) -> bool:
    """Whether the task cuts ``item`` short when tokenising it."""
    task.report = DataReport()
    task.predict_features([item])
    return bool(task.report.to_dict())


def predict_requests(
    multi: MultiPromptModel,
    requests: list[Request],
    max_rows: int,
    refuse_overlong: bool = False,
    on_pass: Callable[[int], None] = lambda rows: None,
) -> list[list[dict[str, Any]] | Exception]:
    """The predictions of each request (in order), or the error that request alone met.

    Rows of every mixable task go through ``multi.run`` ``max_rows`` at a time, sorted by length so a
    pass pads little; generation rows share ``generate()`` calls; other tasks (multiple choice) run on
    their own task model. ``on_pass`` sees the rows of each shared pass (or generate call)."""
    results: list[list[dict[str, Any]] | Exception | None] = [None] * len(requests)
    live: list[int] = []
    with multi.tokenizing:
        for i, request in enumerate(requests):
            try:
                request.entry = multi.entry(request.task)
                request.features = featurize(request.entry, request.inputs, refuse_overlong)
                live.append(i)
            except Exception as exc:  # this request's own error, answered alone
                results[i] = exc
    mixed = [i for i in live if mixable(requests[i].entry)]
    run_mixed(multi, [requests[i] for i in mixed], max_rows, on_pass)
    generative = [i for i in live if requests[i].entry.task.backbone_kind != "encoder"]
    run_generation(multi, [requests[i] for i in generative], max_rows, on_pass)
    alone: dict[str, list[int]] = defaultdict(list)
    for i in live:
        if i not in mixed and i not in generative:
            alone[requests[i].task].append(i)
    for indices in alone.values():
        entry = requests[indices[0]].entry
        outputs = entry.task.run_features(entry.model, [g for i in indices for g in requests[i].features])
        done = 0
        for i in indices:
            requests[i].outputs = outputs[done : done + len(requests[i].features)]
            done += len(requests[i].features)
    with multi.tokenizing:
        for i in live:
            request = requests[i]
            try:
                results[i] = request.entry.task.decode_predictions(
                    request.inputs, request.features, request.outputs
                )
            except Exception as exc:
                results[i] = exc
    return results  # type: ignore[return-value]


def run_generation(
    multi: MultiPromptModel, requests: list[Request], max_rows: int, on_pass: Callable[[int], None]
) -> None:
    """Every feature of generation ``requests`` through shared ``generate()`` calls, one per set of
    decoding options (and seed), each row with its own task's prompt; fills ``outputs`` with
    ``{"token_ids": [...]}`` as ``Task.run_features`` would."""
    groups: dict[tuple[str, int], list[tuple[int, int, int, dict[str, Any]]]] = defaultdict(list)
    for r, request in enumerate(requests):
        task = request.entry.task
        key = (json.dumps(task.decoding(), sort_keys=True), task.config.train.seed)
        request.outputs = [[{} for _ in group] for group in request.features]
        for i, group in enumerate(request.features):
            for j, feature in enumerate(group):
                groups[key].append((r, i, j, feature))
    for (options, seed), rows in groups.items():
        for start in range(0, len(rows), max_rows):
            chunk = rows[start : start + max_rows]
            collated = requests[chunk[0][0]].entry.task.collate([f for *_, f in chunk])
            prefix = (
                "prompt_" if "prompt_input_ids" in collated else ""
            )  # causal LMs: the left-padded prompts
            batch = {k: collated[prefix + k] for k in ("input_ids", "attention_mask")}
            on_pass(len(chunk))
            decoding = json.loads(options)
            with seeded(seed, decoding):
                ids = multi.generate(batch, [requests[r].task for r, *_ in chunk], **decoding)
            for (r, i, j, _), row in zip(chunk, ids, strict=True):
                requests[r].outputs[i][j] = {"token_ids": row}


def mixable(entry: TaskEntry | None) -> bool:
    return entry is not None and entry.task.backbone_kind == "encoder" and entry.task.mixed_batches


def run_mixed(
    multi: MultiPromptModel, requests: list[Request], max_rows: int, on_pass: Callable[[int], None]
) -> None:
    """Every feature of ``requests`` through shared backbone passes; fills each request's ``outputs``."""
    rows = [
        (r, i, j, feature)
        for r, request in enumerate(requests)
        for i, group in enumerate(request.features)
        for j, feature in enumerate(group)
    ]
    rows.sort(key=lambda row: len(row[3]["input_ids"]))
    for request in requests:
        request.outputs = [[{} for _ in group] for group in request.features]
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        on_pass(len(chunk))
        batch = dict(multi.tokenizer.pad([encoder_inputs(f) for *_, f in chunk], return_tensors="pt"))
        tasks = [requests[r].task for r, *_ in chunk]
        for (r, i, j, _), output in zip(chunk, multi.run(batch, tasks), strict=True):
            requests[r].outputs[i][j] = output
