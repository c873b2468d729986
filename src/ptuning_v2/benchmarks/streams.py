"""OpenAI-compatible streams at once: does a stream wait for the others, and what do they cost together?

Two chat tasks on one decoder backbone (random prompts: what serving costs does not depend on trained
values), every stream decoding exactly ``tokens`` new tokens (``min_new_tokens`` = ``max_new_tokens``,
greedy), served by a real ``ptv2 serve`` process in five ways (``WAYS``): one generation at a time
(``--model-threads 1``); one ``generate()`` call per stream on each of two model threads (the default;
on a CPU each thread gets an equal share of torch's threads); request-level batching (the predict
route, whose dynamic batch shares one ``generate()`` call until its longest row ends, answers whole);
and iteration-level batching (``--decode-batching``: one decode loop, every running stream a row of each
backbone pass) with two model threads (the loop on one core's share, the other thread free for predict
batches) and with one.
Per round and per count of streams (1, 2, 4, ...), that many streams are opened at once, or one every
``gap_ms`` (arrivals spread over time, where request-level batching cannot add a request to a running
batch), over both tasks in turn. Reported, as medians over rounds: the longest any stream waited for its
first text chunk, the longest any took to its end (both from its own request), and the new tokens per
second of all of them together (from the first request to the last end). Every stream must join to the
text of the same request alone.
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch

from ptuning_v2.benchmarks.multitask import random_checkpoint
from ptuning_v2.serving.loadtest import server_process
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

QUESTIONS = (
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "How many legs does a spider have?",
    "What do bees make?",
    "Why is the sky blue?",
    "What is the largest ocean?",
    "Who wrote Hamlet?",
    "What is water made of?",
)
WAYS = {
    "one at a time (--model-threads 1)": ["--model-threads", "1"],
    "one generate() per stream (--model-threads 2)": ["--model-threads", "2"],
    "request-level batches (predict route, --model-threads 1)": [
        "--model-threads",
        "1",
        "--max-wait-ms",
        "50",
    ],
    "decode loop (--decode-batching, --model-threads 2)": ["--model-threads", "2", "--decode-batching"],
    "decode loop (--decode-batching, --model-threads 1)": ["--model-threads", "1", "--decode-batching"],
}
"""``ptv2 serve`` flags of each way; two model threads split the CPU threads, one has them all."""
REQUEST_LEVEL = "request-level batches (predict route, --model-threads 1)"
"""Answers whole, from ``POST /v1/tasks/{task}/predict``: the requests of one dynamic batch share one
``generate()`` call, which runs until its longest row ends (no streaming: the first chunk is the end)."""


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
    gap_ms: float
    """Between one stream's request and the next one's (0: all at once)."""
    by_way: dict[str, dict[int, dict[str, float]]]
    """Way of serving -> streams -> medians over rounds: ``last_first_chunk_s`` (the longest wait for a
    first chunk), ``last_end_s`` (the longest request, to its end), ``tokens_per_s`` (all of them)."""
    wrong: int
    """Streams whose text is not that of the same request alone."""
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


def predicted(url: str, task: str, question: str, tokens: int) -> StreamTiming:
    """One generation through the predict route, whole (its tasks decode ``tokens`` new tokens)."""
    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/tasks/{task}/predict", json={"inputs": [question]}, timeout=600)
    response.raise_for_status()
    end = time.perf_counter() - start
    return StreamTiming(end, end, response.json()["outputs"][0]["generated"])


def measure_server(
    url: str,
    jobs: list[tuple[str, str]],
    counts: tuple[int, ...],
    tokens: int,
    rounds: int,
    ask: Callable[[str, str, str, int], StreamTiming] = stream,
    gap_s: float = 0.0,
) -> tuple[dict[int, dict[str, float]], int]:
    """Per count of streams, medians over ``rounds`` of the first ``count`` (task, question) jobs, asked at
    once or one every ``gap_s`` (``ask``: streamed, or through the predict route); the count of answers
    whose text differs from the same job streamed alone."""
    alone = [stream(url, task, question, tokens).text for task, question in jobs]
    runs: dict[int, list[list[tuple[float, StreamTiming]]]] = {count: [] for count in counts}
    wrong = 0

    def sent_in_turn(index: int, start: float) -> tuple[float, StreamTiming]:
        """Job ``index``, asked ``index * gap_s`` after ``start``: when it was sent, and its timing."""
        time.sleep(max(0.0, start + index * gap_s - time.perf_counter()))
        sent = time.perf_counter() - start
        return sent, ask(url, *jobs[index], tokens)

    with concurrent.futures.ThreadPoolExecutor(max(counts)) as pool:
        for _ in range(rounds):
            for count in counts:
                start = time.perf_counter()
                timings = list(pool.map(sent_in_turn, range(count), [start] * count))
                wrong += sum(t.text != text for (_, t), text in zip(timings, alone, strict=False))
                runs[count].append(timings)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return {
        count: {
            "last_first_chunk_s": median([max(t.first_chunk_s for _, t in timings) for timings in done]),
            "last_end_s": median([max(t.end_s for _, t in timings) for timings in done]),
            "tokens_per_s": median(
                [count * tokens / max(s + t.end_s for s, t in timings) for timings in done]
            ),
        }
        for count, done in runs.items()
    }, wrong


def run_streams(
    model: str,
    tokens: int,
    rounds: int,
    counts: tuple[int, ...],
    command: str,
    ways: tuple[str, ...] = tuple(WAYS),
    gap_ms: float = 0.0,
) -> StreamsResult:
    tasks = ["task-a", "task-b"]
    options = {"chat_template": True, "source_template": "{source}", "max_new_tokens": tokens}
    options["generation"] = {"min_new_tokens": tokens}
    jobs = [(tasks[i % len(tasks)], question) for i, question in enumerate(QUESTIONS)]
    measured, wrong = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for seed, task in enumerate(tasks):
            torch.manual_seed(seed)
            prompt = {"num_virtual_tokens": 8, "init_std": 0.02}
            folders.append(str(random_checkpoint(model, Path(tmp) / task, "causal_lm", prompt, {}, options)))
        for way in ways:
            args = ["--prompts", *folders, "--names", *tasks, *WAYS[way], "--no-access-log"]
            with server_process(args, Path(tmp) / "server.log") as (url, _pid):
                ask = predicted if way == REQUEST_LEVEL else stream
                measured[way], bad = measure_server(url, jobs, counts, tokens, rounds, ask, gap_ms / 1e3)
            wrong += bad
    return StreamsResult(model, tokens, rounds, torch.get_num_threads(), gap_ms, measured, wrong, command)


def markdown(result: StreamsResult) -> str:
    counts = list(next(iter(result.by_way.values())))
    spread = f", one every {result.gap_ms:g} ms" if result.gap_ms else " at once"
    header = " | ".join(f"{count}{spread}" for count in counts)
    rows = []
    for label, key, unit in (
        ("the longest wait for a first chunk", "last_first_chunk_s", "s"),
        ("the longest request, to its end", "last_end_s", "s"),
        ("new tokens per second, all streams", "tokens_per_s", ""),
    ):
        rows.append(f"| **{label}** | {' | '.join('' for _ in counts)} |")
        for way, measured in result.by_way.items():
            cells = " | ".join(f"{measured[count][key]:.2f}{unit}" for count in counts)
            rows.append(f"| {way} | {cells} |")
    return "\n".join(
        [
            f"# Streams at once: {result.model}",
            "",
            f"Command: `{result.command}`",
            "",
            f"Two chat tasks (random prompts, k = 8) on one backbone; every stream exactly {result.tokens} new "
            f"tokens (greedy), the streams over both tasks in turn, "
            + (f"one request every {result.gap_ms:g} ms, " if result.gap_ms else "all requests at once, ")
            + f"served by `ptv2 serve` with {result.cpu_threads} CPU threads. Medians of {result.rounds} rounds; "
            "seconds from each stream's own request; tokens per second from the first request to the last end. "
            f"Streams whose text differs from the same request alone: **{result.wrong}**.",
            "",
            f"| way of serving | {header} |",
            "|---|" + "---|" * len(counts),
            *rows,
            "",
        ]
    )


def write(result: StreamsResult, output_dir: Path) -> None:
    write_json_atomic(output_dir / "streams.json", asdict(result))
    write_text_atomic(output_dir / "streams.md", markdown(result))
