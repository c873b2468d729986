"""The store-scale load test of ``ptv2 serve --store``: many tasks on one backbone, few of them in memory.

It builds a store of ``tasks`` task folders, each a copy of one of a few real trained checkpoints
(``task-0000`` ... in namespaces of 100: ``ns-00/task-0000``), starts ``ptv2 serve --store`` with at most
``max_loaded`` of them in memory, and sends one-input requests from closed-loop clients in three
traffic shapes, in this order, on the same server:

- ``all_hot``: every request to one of ``max_loaded`` tasks, all loaded beforehand;
- ``zipf``: task popularity Zipf-distributed (``P(rank r) ~ r^-s``, s = 1.1) over all tasks, ranks
  given to the tasks in a seeded random order;
- ``uniform``: every task equally likely.

Each shape starts with an unmeasured warm-up of a quarter of its requests (the cache reaches its steady
state). With ``rounds`` > 1 the three shapes run that many times over, and the Zipf / all-hot throughput
ratio is the median of each round's: a shape lasts seconds, and this machine's speed drifts more than that
ratio's target margin between two runs. Reported per shape, over every round: throughput, latency
p50/p99, the latency p50/p99 of cold requests (those whose task was not in memory: they loaded it or
waited for its load; told by the server's access log), the hit rate and evictions (from ``/metrics``),
and the server's RSS (at the end of each round: does it level off under the churn of loads and evictions?).
Every answer is checked against the prediction of the checkpoint the task is a copy of, as in
``loadtest.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from ptuning_v2.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from ptuning_v2.serving.loadtest import expected_answers, measure, percentiles, sample_inputs, server_process
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

SHAPES = ("all_hot", "zipf", "uniform")
NAMESPACE_SIZE = 100


def build_store(root: Path, checkpoints: dict[str, str], count: int) -> dict[str, str]:
    """``count`` task folders under ``root``, task ``i`` a copy of the ``i % len(checkpoints)``-th
    checkpoint; returns task name -> the name of the checkpoint it copies."""
    bases = list(checkpoints)
    copies = {}
    for i in range(count):
        name = f"ns-{i // NAMESPACE_SIZE:02d}/task-{i:04d}"
        base = bases[i % len(bases)]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for file in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(Path(checkpoints[base]) / file, folder / file)
        copies[name] = base
    return copies


def traffic(
    shape: str, names: list[str], hot: list[str], count: int, rng: random.Random, s: float
) -> list[str]:
    """The tasks of ``count`` requests of a traffic shape."""
    if shape == "all_hot":
        return rng.choices(hot, k=count)
    if shape == "uniform":
        return rng.choices(names, k=count)
    ranked = rng.sample(names, len(names))
    weights = [(rank + 1) ** -s for rank in range(len(ranked))]
    return rng.choices(ranked, weights=weights, k=count)


def server_rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` (Linux ``/proc``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def cache_counters(url: str) -> dict[str, float]:
    """The cache's counters from ``/metrics``: hits, misses, evictions, loads, load failures."""
    wanted = {
        "ptv2_task_cache_hits_total": "hits",
        "ptv2_task_cache_misses_total": "misses",
        "ptv2_task_cache_evictions_total": "evictions",
        "ptv2_task_load_seconds_count": "loads",
        "ptv2_task_load_failures_total": "load_failures",
    }
    counters = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            counters[wanted[name]] = float(value)
    return counters


def cold_requests(log: Path, tag: str) -> set[str]:
    """The request ids starting with ``tag`` whose task was cold (``cache`` miss or wait) in the
    server's access log."""
    cold = set()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line) if line.startswith("{") else {}
        except json.JSONDecodeError:
            continue
        if str(record.get("request_id", "")).startswith(tag) and record.get("cache") in ("miss", "wait"):
            cold.add(record["request_id"])
    return cold


def combined(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One traffic shape over its rounds: counts summed, throughput over the time of all rounds, latency
    percentiles over every request, RSS at the last round's end (and at each round's)."""
    counters = {k: sum(r["counters"].get(k, 0) for r in results) for k in results[0]["counters"]}
    lookups = counters["hits"] + counters["misses"]
    total = {
        k: sum(r[k] for r in results)
        for k in ("requests", "answered", "wrong", "lost", "duplicated_or_swapped")
    }
    seconds = sum(r["seconds"] for r in results)
    return {
        **total,
        "seconds": round(seconds, 3),
        "throughput_rps": round(total["answered"] / seconds, 2),
        "throughput_each_round": [r["throughput_rps"] for r in results],
        "latency_ms": percentiles([t for r in results for t in r["latencies"]]),
        "failures": [f for r in results for f in r["failures"]][:10],
        "cold_requests": sum(len(r["cold"]) for r in results),
        "cold_latency_ms": percentiles([t for r in results for t in r["cold"]]),
        "hit_rate": round(counters["hits"] / lookups, 4) if lookups else None,
        "loads": int(counters["loads"]),
        "evictions": int(counters["evictions"]),
        "load_failures": int(counters["load_failures"]),
        "server_rss_mb": results[-1]["server_rss_mb"],
        "server_rss_each_round_mb": [r["server_rss_mb"] for r in results],
    }


def run_store_bench(
    checkpoints: dict[str, str],
    output_dir: Path,
    tasks: int = 1000,
    max_loaded: int = 100,
    clients: int = 16,
    requests: int = 2000,
    inputs_per_task: int = 16,
    max_seconds: float = 300.0,
    zipf_s: float = 1.1,
    rounds: int = 1,
    server_args: list[str] | None = None,
    store_dir: Path | None = None,
    seed: int = 0,
    command: str = "",
) -> dict[str, Any]:
    """Build the store, run the three shapes ``rounds`` times on one server; writes ``store.json`` and
    ``store.md``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ptv2-store-bench-"))
    store = store_dir or scratch / "store"
    copies = build_store(store, checkpoints, tasks)
    base_inputs = {name: sample_inputs(path, inputs_per_task) for name, path in checkpoints.items()}
    base_expected = expected_answers(checkpoints, base_inputs)
    inputs = {name: base_inputs[base] for name, base in copies.items()}
    expected = {name: base_expected[base] for name, base in copies.items()}
    rng = random.Random(seed)
    names = list(copies)
    hot = rng.sample(names, min(max_loaded, len(names)))
    log = scratch / "server.log"
    args = ["--store", str(store), "--max-loaded-tasks", str(max_loaded), *(server_args or [])]
    runs: dict[str, list[dict[str, Any]]] = {shape: [] for shape in SHAPES}
    with server_process(args, log) as (url, pid):
        one = [(hot[0], 0)]
        asyncio.run(measure(url, one, inputs, expected, 1, max_seconds))
        rss_one_loaded = server_rss_mb(pid)
        for round_ in range(rounds):
            for shape in SHAPES:
                if shape == "all_hot":
                    warm = [(name, 0) for name in hot]
                else:
                    warm = [(name, 0) for name in traffic(shape, names, hot, requests // 4, rng, zipf_s)]
                asyncio.run(measure(url, warm, inputs, expected, clients, max_seconds))
                jobs = [
                    (name, rng.randrange(inputs_per_task))
                    for name in traffic(shape, names, hot, requests, rng, zipf_s)
                ]
                before = cache_counters(url)
                latency_of: dict[str, float] = {}
                tag = f"{shape}-{round_}-"
                result = asyncio.run(
                    measure(url, jobs, inputs, expected, clients, max_seconds, latency_of, tag)
                )
                after = cache_counters(url)
                result.update(
                    counters={k: after.get(k, 0) - before.get(k, 0) for k in after},
                    latencies=list(latency_of.values()),
                    cold=[latency_of[r] for r in cold_requests(log, tag) if r in latency_of],
                    server_rss_mb=server_rss_mb(pid),
                )
                runs[shape].append(result)
    shapes = {shape: combined(results) for shape, results in runs.items()}
    shutil.rmtree(scratch / "store", ignore_errors=True)
    each_round = [
        round(zipf["throughput_rps"] / max(hot["throughput_rps"], 1e-9), 2)
        for hot, zipf in zip(runs["all_hot"], runs["zipf"], strict=True)
    ]
    report = {
        "command": command,
        "checkpoints": {name: str(path) for name, path in checkpoints.items()},
        "store": (
            f"{tasks} tasks, each a copy of one of the {len(checkpoints)} checkpoint(s) above (in turn), "
            f"in {len(range(0, tasks, NAMESPACE_SIZE))} namespace(s) of up to {NAMESPACE_SIZE}"
        ),
        "tasks": tasks,
        "max_loaded_tasks": max_loaded,
        "clients": clients,
        "requests": requests,
        "zipf_s": zipf_s,
        "server_args": server_args or [],
        "cpu_count": os.cpu_count(),
        "rss_one_loaded_mb": rss_one_loaded,
        "shapes": shapes,
        "rounds": rounds,
        "zipf_vs_all_hot_throughput": round(statistics.median(each_round), 2),
        "zipf_vs_all_hot_each_round": each_round,
        "rss_all_hot_vs_one_loaded": round(shapes["all_hot"]["server_rss_mb"] / rss_one_loaded, 2),
        "all_correct": all(
            m["wrong"] == m["lost"] == m["duplicated_or_swapped"] == 0 and m["answered"] == requests * rounds
            for m in shapes.values()
        ),
        "server_log": str(log),
    }
    write_json_atomic(output_dir / "store.json", report)
    write_text_atomic(output_dir / "store.md", markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "| traffic | answered | wrong / lost / swapped | throughput (req/s) | p50 ms | p99 ms | cold requests "
        "| cold p50 ms | cold p99 ms | hit rate | loads | evictions | server RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, m in report["shapes"].items():
        hit_rate = "-" if m["hit_rate"] is None else f"{m['hit_rate']:.3f}"
        rows.append(
            f"| {shape.replace('_', '-')} | {m['answered']} / {m['requests']} | {m['wrong']} / {m['lost']} / "
            f"{m['duplicated_or_swapped']} | {m['throughput_rps']:.1f} | {m['latency_ms']['p50']:.1f} | "
            f"{m['latency_ms']['p99']:.1f} | {m['cold_requests']} | {m['cold_latency_ms']['p50']:.1f} | "
            f"{m['cold_latency_ms']['p99']:.1f} | {hit_rate} | {m['loads']} | {m['evictions']} | "
            f"{m['server_rss_mb']:.0f} |"
        )
    return "\n".join(
        [
            "# ptv2 serve: store-scale load test",
            "",
            f"`{report['command']}`",
            "",
            f"Store: {report['store']}. At most {report['max_loaded_tasks']} tasks in memory; "
            f"{report['clients']} concurrent closed-loop clients on loopback, {report['requests']} one-input "
            f"requests per traffic shape and round (after a warm-up of a quarter as many), "
            f"{report['rounds']} round(s) of the three shapes, Zipf s = {report['zipf_s']}, "
            f"{report['cpu_count']} CPU cores shared by server and clients. Every answer is checked against "
            "the prediction of the checkpoint the task copies.",
            "",
            *rows,
            "",
            f"Zipf throughput: **{report['zipf_vs_all_hot_throughput']:.2f}x** all-hot (median of the rounds: "
            f"{', '.join(f'{r:.2f}' for r in report['zipf_vs_all_hot_each_round'])}). Server RSS with "
            f"{report['max_loaded_tasks']} tasks loaded: **{report['rss_all_hot_vs_one_loaded']:.2f}x** with one "
            f"({report['rss_one_loaded_mb']:.0f} MiB); at the end of each round's all-hot phase: "
            f"{', '.join(f'{r:.0f}' for r in report['shapes']['all_hot']['server_rss_each_round_mb'])} MiB. "
            f"Every answer correct: **{report['all_correct']}**.",
            "",
        ]
    )
