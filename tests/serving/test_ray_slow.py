"""``ptv2 serve --ray --replicas 2`` for real: a local Ray instance, two replicas each with its own tiny
BERT and three prompts, concurrent requests over three tasks answered as ``ptv2 predict`` answers, by
both replicas, in batches made by Ray Serve's ``@serve.batch``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from launching import free_port
from serving_checks import NER, SENTIMENT, TOPIC, cli_predict, metric, same_prediction

pytestmark = pytest.mark.slow
pytest.importorskip("ray")
TASKS = {"sentiment": SENTIMENT, "topic": TOPIC, "ner": NER}


async def predict_all(url: str, jobs: list[tuple[str, int]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post(f"{url}/v1/tasks/{task}/predict", json={"inputs": [TASKS[task][i]]})
                for task, i in jobs
            )
        )


async def get_all(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.get(url) for _ in range(n)))


def test_two_ray_replicas_answer_as_ptv2_predict(checkpoints: dict[str, Path], server_factory) -> None:
    server = server_factory(
        "--ray", "--replicas", "2", "--replica-cpus", "0.5", "--max-batch-size", "8", "--max-wait-ms", "20",
        "--prompts", *(str(checkpoints[name]) for name in TASKS), "--names", *TASKS,
    )  # fmt: skip
    # The proxy answers /health once one replica is up; the command says it is serving once both are.
    ready = "ptv2 serve: 3 task(s) ['ner', 'sentiment', 'topic'] on 2 replica(s) of a local Ray instance"
    deadline = time.monotonic() + 180
    while ready not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ready in server.log.read_text(), server.log.read_text()
    expected = {name: cli_predict(checkpoints[name], texts) for name, texts in TASKS.items()}
    jobs = [(name, i % 3) for i in range(24) for name in TASKS]
    responses = asyncio.run(predict_all(server.url, jobs))
    for (task, i), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        [output] = response.json()["outputs"]
        same_prediction(output, expected[task][i])
    replicas = {response.headers["x-ptv2-replica"] for response in responses}
    assert len(replicas) == 2, replicas

    # Each replica counts its own batches: together fewer than the 72 requests, so requests shared batches.
    # Ray's router sends one request at a time to the same replica: concurrent /health reach both.
    batches: dict[str, int] = {}
    for _ in range(10):
        for health in asyncio.run(get_all(f"{server.url}/health", 16)):
            assert health.json()["status"] == "ok" and health.json()["tasks"] == 3
            batches[health.headers["x-ptv2-replica"]] = health.json()["batches"]
        if len(batches) == 2:
            break
    assert set(batches) == replicas and sum(batches.values()) < len(jobs), batches

    assert {t["name"] for t in httpx.get(f"{server.url}/v1/tasks").json()["tasks"]} == set(TASKS)
    for response in (
        httpx.post(f"{server.url}/v1/tasks", content=json.dumps({"checkpoint": str(checkpoints["ner"])})),
        httpx.delete(f"{server.url}/v1/tasks/ner"),
    ):
        assert response.status_code == 409
        assert "2 replicas" in response.json()["error"]["message"]
    error = httpx.post(f"{server.url}/v1/tasks/nope/predict", json={"inputs": ["x"]})
    assert error.status_code == 404 and "unknown task 'nope'" in error.json()["error"]["message"]

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=180) == 0, server.log.read_text()
    assert "stopped after answering every accepted request" in server.log.read_text()


def test_a_replica_that_cannot_load_its_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_run" / "checkpoint"
    command = [sys.executable, "-m", "ptuning_v2.cli.main", "serve", "--ray", "--port", str(free_port()),
               "--prompts", str(missing)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error == (
        f"ptv2 serve: error: the Ray Serve deployment did not start: CheckpointError: {missing}: "
        "not a ptuning-v2 checkpoint (no ptv2_checkpoint.json)"
    )


def test_a_ray_replica_serves_the_store_with_keys_metrics_and_request_ids(
    store: Path, checkpoints: dict[str, Path], tmp_path: Path, server_factory
) -> None:
    """docs/serving.md, "The store, keys and metrics under Ray Serve": the replica loads store tasks on demand
    (LRU, one loaded), checks keys as ``ptv2 serve`` does, counts its own metrics, and the answer carries the
    client's request id once (Ray's proxy adds it; the replica logs it)."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        "  - {name: acme, key: acme-secret-0123456789, role: client, tasks: ['acme/*']}\n"
        "  - {name: ops, key: ops-secret-0123456789, role: admin, tasks: ['*']}\n"
    )
    server = server_factory(
        "--ray", "--replicas", "1", "--replica-cpus", "0.5", "--store", str(store), "--api-keys", str(keys),
        "--max-loaded-tasks", "1",
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while "replica(s) of a local Ray instance" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "replica(s) of a local Ray instance" in server.log.read_text(), server.log.read_text()
    acme = {"Authorization": "Bearer acme-secret-0123456789"}
    admin = {"Authorization": "Bearer ops-secret-0123456789"}

    def ask(task: str, text: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/tasks/{task}/predict", json={"inputs": [text]}, headers=headers, timeout=120
        )

    answer = ask("acme/topic", "paris", {**acme, "X-Request-ID": "ray-store-1"})
    assert answer.status_code == 200, answer.text
    same_prediction(answer.json()["outputs"][0], cli_predict(checkpoints["topic"], ["paris"])[0])
    assert answer.headers.get_list("x-request-id") == ["ray-store-1"]
    answer = ask("acme/sentiment", "the movie was great", acme)  # evicts acme/topic
    assert answer.status_code == 200, answer.text
    same_prediction(
        answer.json()["outputs"][0], cli_predict(checkpoints["sentiment"], ["the movie was great"])[0]
    )
    assert ask("acme/topic", "paris", acme).status_code == 200  # loaded again

    assert ask("acme/topic", "paris", {}).status_code == 401
    assert ask("beta/ner", "John", acme).status_code == 404  # another tenant's task: as if it did not exist
    listed = httpx.get(f"{server.url}/v1/tasks", headers=acme).json()["tasks"]
    assert {t["name"] for t in listed} == {"acme/sentiment", "acme/topic"}
    added = httpx.post(f"{server.url}/v1/tasks", json={"checkpoint": "beta/ner"}, headers=acme)
    assert added.status_code == 403
    assert httpx.get(f"{server.url}/metrics", headers=acme).status_code == 403

    assert metric(server.url, "ptv2_task_cache_misses_total", admin) == 3
    assert metric(server.url, "ptv2_task_cache_evictions_total", admin) == 2
    assert metric(server.url, "ptv2_requests_total", admin) >= 5

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=180) == 0, server.log.read_text()
    log = server.log.read_text()
    assert '"request_id": "ray-store-1"' in log and '"task": "acme/topic"' in log
    assert "secret-0123456789" not in log
