"""A bounded load test of ``ptv2 serve`` on loopback: concurrent clients over several tasks, every answer
checked against the task's own prediction for that input, with dynamic batching on and off, and the same
requests done offline.

Each server mode starts its own server process (same checkpoints, same limits but ``--no-batching``),
warms it up, then ``clients`` closed-loop clients (``LeanConnection``) send ``requests`` one-input requests
between them (tasks in turn), stopping early at ``max_seconds``. The offline modes (``Offline``) are what
the server's work costs without serving it: the same requests through ``predict_requests`` in this process
(tokenising, ``MultiPromptModel.run`` and decoding; no HTTP), in sorted batches of the server's batch size
one at a time, or in the shape of the server's own batches on as many threads as its model threads. The
batching server runs ``rounds`` times, each between two offline runs, since the machine's speed drifts.
The expected answer of every (task, input) is what ``ptv2 predict`` gives for that input alone; an answer
matches when its labels, spans and texts are equal and its scores agree to ``1e-4`` (a row's float rounding
may move with the batch it shares).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import torch

from ptuning_v2.checkpoint import TrainedCheckpoint
from ptuning_v2.data import load_builtin
from ptuning_v2.serving.batching import Request, predict_requests
from ptuning_v2.serving.engine import ServeConfig, split_cpu_threads
from ptuning_v2.serving.multi_prompt import MultiPromptModel
from ptuning_v2.utils.io import finite, write_json_atomic, write_text_atomic

TOLERANCE = 1e-4


def sample_inputs(checkpoint: str | Path, count: int, tokens: int | None = None) -> list[Any]:
    """``count`` inputs for a checkpoint's task from its own data's test (or dev) split, as a client
    would send them; with ``tokens``, each text is made exactly that long (``fixed_length``)."""
    run = TrainedCheckpoint.read(checkpoint).run()
    from ptuning_v2.models import load_tokenizer
    from ptuning_v2.tasks import get_task
    from ptuning_v2.training.recipe import load_splits

    splits = (
        load_builtin(run.data.name) if run.data.name else load_splits(run, get_task(run.task), None, False)
    )
    split = splits["test"] if "test" in splits else splits["validation"]
    rows = split.select(range(min(count, len(split))))
    if run.task == "ner":
        inputs = [" ".join(tokens) for tokens in rows["tokens"]]
    elif run.task == "classification":
        pairs = "text_pair" in rows.column_names
        inputs = [[r["text"], r["text_pair"]] if pairs else r["text"] for r in rows]
    elif run.task == "qa":
        inputs = [{"question": r["question"], "context": r["context"]} for r in rows]
    else:
        raise ValueError(f"the load test has no inputs for task {run.task!r}")
    if tokens is None:
        return inputs
    if not all(isinstance(x, str) for x in inputs):
        raise ValueError(f"--input-tokens: task {run.task!r} takes structured inputs; give single texts")
    tokenizer = load_tokenizer(run.model)
    most = run.train.max_length - tokenizer.num_special_tokens_to_add()
    if tokens > most:
        raise ValueError(
            f"--input-tokens {tokens}: {checkpoint} takes at most {most} tokens of text "
            f"(train.max_length={run.train.max_length}); longer inputs would be cut"
        )
    return fixed_length(inputs, tokenizer, tokens)


def fixed_length(texts: list[str], tokenizer: Any, tokens: int) -> list[str]:
    """Each text cut, or extended by the texts after it in turn, to ``tokens`` tokens of ``tokenizer``
    (special tokens not counted): inputs of one length, so no batch pads, as in a synthetic load test."""
    out = []
    for i, text in enumerate(texts):
        following = itertools.cycle(texts[i + 1 :] + texts[: i + 1])
        while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
            text = f"{text} {next(following)}"
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        out.append(text[: offsets[tokens - 1][1]])
    return out


def expected_answers(checkpoints: dict[str, str], inputs: dict[str, list[Any]]) -> dict[str, list[dict]]:
    """Each input's prediction alone, by its own checkpoint (what ``ptv2 predict`` prints), as JSON."""
    from ptuning_v2.trained.model import load_trained

    answers = {}
    for name, checkpoint in checkpoints.items():
        task, model = load_trained(checkpoint, device="cpu")
        answers[name] = [json.loads(json.dumps(finite(task.predict(model, [x])[0]))) for x in inputs[name]]
    return answers


def same_answer(got: Any, want: Any) -> bool:
    """Equal JSON, but for floats within ``TOLERANCE``."""
    if isinstance(want, float) and isinstance(got, int | float):
        return abs(got - want) <= TOLERANCE
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same_answer(got[k], v) for k, v in want.items())
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same_answer, got, want))
    return got == want


class LeanConnection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads answers sized by ``Content-Length``: all
    the load test needs, for far less CPU per request than a general client such as httpx. The clients
    share the machine's cores with the server, so every bit of CPU they spend is taken from the throughput
    they measure."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post_json(
        self, path: str, payload: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """The status and body of one POST; any failure closes the connection (the next call reopens it)."""
        try:
            return await asyncio.wait_for(
                self._post(path, json.dumps(payload).encode(), headers or {}), self.timeout
            )
        except BaseException:
            self.close()
            raise

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        status_line = await reader.readuntil(b"\r\n")
        length = None
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ConnectionError(f"an answer without Content-Length: {status_line!r}")
        return int(status_line.split()[1]), await reader.readexactly(length)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def measure(
    url: str,
    jobs: list[tuple[str, int]],
    inputs: dict[str, list[Any]],
    expected: dict[str, list[dict]],
    clients: int,
    max_seconds: float,
    latency_of: dict[str, float] | None = None,
    tag: str = "",
    latencies: list[float] | None = None,
) -> dict[str, Any]:
    """Run ``jobs`` ((task, input index) each) through ``clients`` concurrent clients; latency of each,
    and every answer checked. With ``latency_of``, job ``j`` is sent with request id ``{tag}{j}`` and its
    latency (seconds) recorded under that id; ``latencies`` collects every latency."""
    queue = list(reversed(range(len(jobs))))
    latencies = [] if latencies is None else latencies
    wrong, lost, foreign = [], [], []
    answered = [0] * len(jobs)
    stop_at = time.monotonic() + max_seconds

    async def client(connection: LeanConnection) -> None:
        while queue and time.monotonic() < stop_at:
            j = queue.pop()
            name, i = jobs[j]
            headers = {"x-request-id": f"{tag}{j}"} if latency_of is not None else None
            start = time.perf_counter()
            try:
                status, body = await connection.post_json(
                    f"/v1/tasks/{name}/predict", {"inputs": [inputs[name][i]]}, headers
                )
            except (OSError, EOFError, ValueError, TimeoutError, asyncio.LimitOverrunError) as exc:
                lost.append({"job": j, "error": repr(exc)})
                continue
            latencies.append(time.perf_counter() - start)
            if latency_of is not None:
                latency_of[f"{tag}{j}"] = latencies[-1]
            if status != 200:
                lost.append({"job": j, "status": status, "body": body[:200].decode(errors="replace")})
                continue
            answered[j] += 1
            (output,) = json.loads(body)["outputs"]
            if not same_answer(output, expected[name][i]):
                owner = next(
                    (k for k, want in enumerate(expected[name]) if k != i and same_answer(output, want)), None
                )
                (foreign if owner is not None else wrong).append({"job": j, "task": name, "input": i})

    connections = [LeanConnection(url, timeout=60) for _ in range(clients)]
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    seconds = time.perf_counter() - started
    sent = sum(1 for j in range(len(jobs)) if j not in set(queue))
    return {
        "requests": sent,
        "answered": sum(answered),
        "seconds": round(seconds, 3),
        "throughput_rps": round(sum(answered) / seconds, 2),
        "latency_ms": percentiles(latencies),
        "wrong": len(wrong),
        "lost": len(lost),
        "duplicated_or_swapped": len(foreign),
        "failures": (wrong + lost + foreign)[:10],
    }


class Offline:
    """The server's work without serving it: the same requests through ``predict_requests`` on one
    ``MultiPromptModel`` in this process (no HTTP), every answer checked as the clients check the server's."""

    def __init__(
        self,
        checkpoints: dict[str, str],
        inputs: dict[str, list[Any]],
        expected: dict[str, list[dict]],
        batch_size: int,
    ) -> None:
        self.multi = MultiPromptModel.from_checkpoints(checkpoints)  # the server's default device too
        self.inputs, self.expected, self.batch_size = inputs, expected, batch_size
        predict_requests(
            self.multi, self.requests([(name, 0) for name in checkpoints]), batch_size
        )  # warm-up

    def requests(self, todo: list[tuple[str, int]]) -> list[Request]:
        """As the server parses them: a text through its task's ``parse_input``, anything else as sent."""
        parse = {name: self.multi.entry(name).task.parse_input for name, _ in todo}
        return [
            Request(name, [parse[name](x) if isinstance(x := self.inputs[name][i], str) else x])
            for name, i in todo
        ]

    def run(self, jobs: list[tuple[str, int]], group: int | None = None, threads: int = 1) -> dict[str, Any]:
        """All ``jobs`` at once (rows sorted by length, ``batch_size`` rows per backbone pass), or with
        ``group``, ``group`` requests at a time in the order they were sent (the server's batches' shape),
        on ``threads`` threads that share torch's threads as ``ptv2 serve``'s model threads do."""
        passes: list[int] = []
        todo, step = self.requests(jobs), group or len(jobs)
        groups = [todo[start : start + step] for start in range(0, len(todo), step)]
        answers: list[list] = [[] for _ in groups]

        def work(first: int) -> None:
            for g in range(first, len(groups), threads):
                answers[g] = predict_requests(self.multi, groups[g], self.batch_size, on_pass=passes.append)

        cores = torch.get_num_threads()
        split_cpu_threads(self.multi, ServeConfig(model_threads=threads))
        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, range(threads)))
        finally:
            seconds = time.perf_counter() - started
            torch.set_num_threads(cores)
        results = [result for answer in answers for result in answer]
        lost = [j for j, result in enumerate(results) if isinstance(result, Exception)]
        wrong = [
            j
            for j, ((name, i), result) in enumerate(zip(jobs, results, strict=True))
            if j not in lost
            and not same_answer(json.loads(json.dumps(finite(result[0]))), self.expected[name][i])
        ]
        return {
            "requests": len(jobs),
            "answered": len(jobs) - len(lost),
            "seconds": round(seconds, 3),
            "throughput_rps": round(len(jobs) / seconds, 2),
            "batches": len(passes),
            "requests_per_batch": round(len(jobs) / max(len(passes), 1), 2),
            "wrong": len(wrong),
            "lost": len(lost),
            "duplicated_or_swapped": 0,
            "failures": [{"job": j, "error": repr(results[j])} for j in lost[:5]]
            + [{"job": j} for j in wrong[:5]],
        }

    def close(self) -> None:
        self.multi.close()


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one mode as one: counts and seconds summed, throughput over the total."""
    total = {
        k: sum(run[k] for run in runs)
        for k in ("requests", "answered", "seconds", "batches", "wrong", "lost")
    }
    total["duplicated_or_swapped"] = sum(run["duplicated_or_swapped"] for run in runs)
    total["seconds"] = round(total["seconds"], 3)
    total["throughput_rps"] = round(total["answered"] / total["seconds"], 2)
    total["requests_per_batch"] = round(total["answered"] / max(total["batches"], 1), 2)
    total["runs_rps"] = [run["throughput_rps"] for run in runs]
    total["failures"] = [f for run in runs for f in run["failures"]][:10]
    return total


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of latencies, in milliseconds (zeros for none)."""
    ms = np.array(seconds) * 1000 if seconds else np.zeros(1)
    return {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p90": round(float(np.percentile(ms, 90)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "max": round(float(ms.max()), 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(args: list[str], log: Path, start_timeout: float = 300):
    """A ``ptv2 serve`` process on a free loopback port; yields its URL and process id, ends it with
    SIGTERM."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ptuning_v2.cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command + args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ptv2 serve exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ptv2 serve did not start in {start_timeout:.0f} s; see {log}")
            time.sleep(0.25)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_load_test(
    checkpoints: dict[str, str],
    output_dir: Path,
    clients: int = 16,
    requests: int = 640,
    inputs_per_task: int = 32,
    max_seconds: float = 120.0,
    server_args: list[str] | None = None,
    command: str = "",
    batch_size: int = 32,
    input_tokens: int | None = None,
    rounds: int = 3,
    model_threads: int = 2,
) -> dict[str, Any]:
    """Both server modes and the offline ones; writes ``load.json`` and ``load.md`` in ``output_dir``.
    ``batch_size`` is the server's ``--max-batch-size``, the offline batches' size; ``model_threads`` the
    server's; the batching server answers ``requests`` requests ``rounds`` times."""
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = {name: sample_inputs(path, inputs_per_task, input_tokens) for name, path in checkpoints.items()}
    expected = expected_answers(checkpoints, inputs)
    names = list(checkpoints)
    jobs = [(names[j % len(names)], (j // len(names)) % inputs_per_task) for j in range(requests)]
    base = ["--prompts", *checkpoints.values(), "--names", *names, "--model-threads", str(model_threads)]
    base += server_args or []
    logs = Path(tempfile.mkdtemp(prefix="ptv2-serve-bench-"))  # the servers' own output, for a failure
    # The machine's speed drifts by tens of percent within a minute: the batching server is measured in
    # `rounds` parts, each between two offline runs (sorted) and followed by one in its own batches' shape.
    reference = Offline(checkpoints, inputs, expected, batch_size)
    times: dict[str, list[float]] = {"batching": [], "no_batching": []}
    try:
        sorted_runs, shaped_runs, served = [reference.run(jobs)], [], []
        with server_process(base, logs / "server_batching.log") as (url, _):
            warm = [(name, i) for name in names for i in range(4)]
            asyncio.run(measure(url, warm, inputs, expected, clients, max_seconds))
            for _ in range(rounds):
                before = httpx.get(f"{url}/health").json()["batches"]
                part = asyncio.run(
                    measure(url, jobs, inputs, expected, clients, max_seconds, latencies=times["batching"])
                )
                part["batches"] = httpx.get(f"{url}/health").json()["batches"] - before
                served.append(part)
                shape = max(1, round(part["answered"] / max(part["batches"], 1)))
                shaped_runs.append(reference.run(jobs, group=shape, threads=model_threads))
                sorted_runs.append(reference.run(jobs))
    finally:
        reference.close()
    with server_process(base + ["--no-batching"], logs / "server_no_batching.log") as (url, _):
        asyncio.run(measure(url, warm, inputs, expected, clients, max_seconds))
        before = httpx.get(f"{url}/health").json()["batches"]
        alone = asyncio.run(
            measure(url, jobs, inputs, expected, clients, max_seconds, latencies=times["no_batching"])
        )
        alone["batches"] = httpx.get(f"{url}/health").json()["batches"] - before
    modes: dict[str, dict[str, Any]] = {
        "offline": combined(sorted_runs),
        "offline_server_batches": combined(shaped_runs),
        "batching": combined(served),
        "no_batching": combined([alone]),
    }
    for mode, seconds in times.items():
        modes[mode]["latency_ms"] = percentiles(seconds)
    vs_offline = [
        part["throughput_rps"] * 2 / (sorted_runs[i]["throughput_rps"] + sorted_runs[i + 1]["throughput_rps"])
        for i, part in enumerate(served)
    ]
    vs_shape = [
        part["throughput_rps"] / shaped["throughput_rps"]
        for part, shaped in zip(served, shaped_runs, strict=True)
    ]
    on, off = modes["batching"], modes["no_batching"]
    report = {
        "command": command,
        "tasks": {name: str(path) for name, path in checkpoints.items()},
        "clients": clients,
        "requests": requests,
        "rounds": rounds,
        "input_tokens": input_tokens,
        "model_threads": model_threads,
        "max_seconds": max_seconds,
        "server_args": server_args or [],
        "cpu_count": os.cpu_count(),
        "modes": modes,
        "throughput_ratio": round(on["throughput_rps"] / max(off["throughput_rps"], 1e-9), 2),
        "server_vs_offline": round(float(np.median(vs_offline)), 3),
        "server_vs_offline_parts": [round(r, 3) for r in vs_offline],
        "server_vs_offline_server_batches": round(float(np.median(vs_shape)), 3),
        "p99_ratio": round(on["latency_ms"]["p99"] / max(off["latency_ms"]["p99"], 1e-9), 2),
        "all_correct": all(m["wrong"] == m["lost"] == m["duplicated_or_swapped"] == 0 for m in modes.values())
        and all(m["answered"] == m["requests"] == requests * len(m["runs_rps"]) for m in modes.values()),
    }
    write_json_atomic(output_dir / "load.json", report)
    write_text_atomic(output_dir / "load.md", markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "| mode | requests answered | wrong / lost / swapped | throughput (req/s) | p50 ms | p99 ms | requests per batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in report["modes"].items():
        latency = m.get("latency_ms")
        p50, p99 = (f"{latency['p50']:.1f}", f"{latency['p99']:.1f}") if latency else ("-", "-")
        rows.append(
            f"| {mode.replace('_', ' ')} | {m['answered']} / {m['requests']} | {m['wrong']} / {m['lost']} / "
            f"{m['duplicated_or_swapped']} | {m['throughput_rps']:.1f} | {p50} | {p99} | "
            f"{m['requests_per_batch']:.2f} |"
        )
    return "\n".join(
        [
            "# ptv2 serve load test",
            "",
            f"`{report['command']}`",
            "",
            f"{report['clients']} concurrent closed-loop clients on loopback, {report['requests']} one-input "
            f"requests over the tasks {', '.join(report['tasks'])} in turn"
            + (f" (every text {report['input_tokens']} tokens)" if report.get("input_tokens") else "")
            + f", {report['cpu_count']} CPU cores shared by server and clients. The batching server answers "
            f"them {report['rounds']} times; before and after each time, the same requests run offline: "
            "through `predict_requests` in this process with no HTTP, in sorted batches of the server's batch "
            "size, one at a time on all cores (`offline`), and in the order they were sent, in groups of the "
            "server's requests per batch on as many threads as the server's "
            f"{report.get('model_threads', 1)} model threads (`offline server batches`, the shape of the "
            "server's batches). Every answer is checked against "
            "the task's own prediction for that input alone. Throughput per run: "
            + "; ".join(
                f"{mode.replace('_', ' ')} " + ", ".join(f"{r:.1f}" for r in m["runs_rps"])
                for mode, m in report["modes"].items()
            )
            + " req/s.",
            "",
            *rows,
            "",
            f"Dynamic batching: **{report['throughput_ratio']:.2f}x** the throughput of one request at a "
            f"time, p99 latency **{report['p99_ratio']:.2f}x**. The server with dynamic batching reaches "
            f"**{report['server_vs_offline']:.3f}x** the offline throughput (target >= 0.9; the median over its "
            "runs of its throughput over the mean of the offline runs on either side: "
            + ", ".join(f"{r:.3f}" for r in report["server_vs_offline_parts"])
            + f"), and **{report['server_vs_offline_server_batches']:.3f}x** the offline throughput in its own "
            f"batches' shape. Every answer correct: **{report['all_correct']}**.",
            "",
        ]
    )
