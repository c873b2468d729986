"""Two OpenAI-compatible streams at once: does the second wait for the first?

Two chat tasks on one decoder backbone (random prompts: what serving costs does not depend on trained
values), each decoding exactly ``tokens`` new tokens (``min_new_tokens`` = ``max_new_tokens``, greedy), are
served by a real ``ptv2 serve`` process with ``--model-threads`` 1 and then 2 (on a CPU it gives each model
thread an equal share of torch's threads). Per round: one stream alone, then one stream per task opened
together. Reported, as medians over rounds: the time to the first text chunk and to the end of each
stream, and the rate of new tokens. Every stream opened together must join to the text of the same
request alone.
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from ptuning_v2.benchmarks.multitask import random_checkpoint
from ptuning_v2.serving.loadtest import server_process
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

QUESTIONS = ("What is the capital of France?", "Name three colours of the rainbow.")


@dataclass
class StreamTiming:
    first_chunk_s: float
    """From sending the request to its first text chunk."""
    end_s: float
    """From sending the request to ``[DONE]``."""
    text: str


@dataclass
class StreamsResult:
    model: str
    tokens: int
    rounds: int
    cpu_threads: int
    """torch's threads in the server before it splits them between its model threads."""
    by_model_threads: dict[int, dict[str, Any]]
    """``--model-threads`` -> medians: ``alone`` (first chunk, end, tokens/s) and ``together`` (the
    earlier and the later first chunk, the end of both, tokens/s of both streams together)."""
    wrong: int
    """Streams opened together whose text is not that of the same request alone."""
    command: str


def stream(url: str, task: str, question: str, tokens: int) -> StreamTiming:
    """One chat completion streamed by server-sent events, timed from the request."""
    body = {"model": task, "messages": [{"role": "user", "content": question}], "max_tokens": tokens}
    start = time.perf_counter()
    first, parts = None, []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if text and first is None:
                first = time.perf_counter() - start
            parts.append(text)
    return StreamTiming(
        first if first is not None else float("nan"), time.perf_counter() - start, "".join(parts)
    )


def measure_server(
    url: str, jobs: list[tuple[str, str]], tokens: int, rounds: int
) -> tuple[dict[str, Any], int]:
    """Medians over ``rounds`` of the first (task, question) job streamed alone and of every job streamed
    at once; the count of streams at once whose text differs from the same job alone."""
    alone_text = [stream(url, task, question, tokens).text for task, question in jobs]
    alone, together, wrong = [], [], 0
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        for _ in range(rounds):
            alone.append(stream(url, *jobs[0], tokens))
            both = list(pool.map(lambda job: stream(url, *job, tokens), jobs))
            wrong += sum(run.text != text for run, text in zip(both, alone_text, strict=True))
            together.append(both)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return {
        "alone": {
            "first_chunk_s": median([r.first_chunk_s for r in alone]),
            "end_s": median([r.end_s for r in alone]),
            "tokens_per_s": median([tokens / r.end_s for r in alone]),
        },
        "together": {
            "earlier_first_chunk_s": median([min(r.first_chunk_s for r in both) for both in together]),
            "later_first_chunk_s": median([max(r.first_chunk_s for r in both) for both in together]),
            "both_end_s": median([max(r.end_s for r in both) for both in together]),
            "tokens_per_s": median([len(both) * tokens / max(r.end_s for r in both) for both in together]),
        },
    }, wrong


def run_streams(model: str, tokens: int, rounds: int, command: str) -> StreamsResult:
    tasks = ["task-a", "task-b"]
    options = {"chat_template": True, "source_template": "{source}", "max_new_tokens": tokens}
    options["generation"] = {"min_new_tokens": tokens}
    measured, wrong = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for seed, task in enumerate(tasks):
            torch.manual_seed(seed)
            prompt = {"num_virtual_tokens": 8, "init_std": 0.02}
            folders.append(str(random_checkpoint(model, Path(tmp) / task, "causal_lm", prompt, {}, options)))
        for threads in (1, 2):
            args = [
                "--prompts",
                *folders,
                "--names",
                *tasks,
                "--model-threads",
                str(threads),
                "--no-access-log",
            ]
            with server_process(args, Path(tmp) / f"server_{threads}.log") as (url, _pid):
                measured[threads], bad = measure_server(
                    url, list(zip(tasks, QUESTIONS, strict=True)), tokens, rounds
                )
            wrong += bad
    return StreamsResult(model, tokens, rounds, torch.get_num_threads(), measured, wrong, command)


def markdown(result: StreamsResult) -> str:
    rows = []
    for threads, m in result.by_model_threads.items():
        alone, together = m["alone"], m["together"]
        rows.append(
            f"| {threads} | {alone['first_chunk_s']:.2f} | {alone['end_s']:.2f} | {alone['tokens_per_s']:.1f} | "
            f"{together['earlier_first_chunk_s']:.2f} | **{together['later_first_chunk_s']:.2f}** | "
            f"{together['both_end_s']:.2f} | {together['tokens_per_s']:.1f} |"
        )
    return "\n".join(
        [
            f"# Two streams at once: {result.model}",
            "",
            f"Command: `{result.command}`",
            "",
            f"Two chat tasks (random prompts, k = 8) on one backbone, each stream exactly {result.tokens} new "
            f"tokens (greedy), served by `ptv2 serve` with {result.cpu_threads} CPU threads split between its "
            f"model threads. Medians of {result.rounds} rounds; seconds from the request. Streams opened "
            f"together whose text differs from the same request alone: **{result.wrong}**.",
            "",
            "| --model-threads | alone: first chunk | alone: end | alone: tokens/s | together: earlier first "
            "chunk | together: later first chunk | together: both ended | together: tokens/s (both) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def write(result: StreamsResult, output_dir: Path) -> None:
    write_json_atomic(output_dir / "streams.json", asdict(result))
    write_text_atomic(output_dir / "streams.md", markdown(result))
