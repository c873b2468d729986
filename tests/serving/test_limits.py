"""The server's limits and shutdown, on the real app served by uvicorn over loopback HTTP in this process
(several configurations without a process start each): overlong inputs refused, a full queue answered
503, a graceful shutdown that answers the requests it accepted, and batching off."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from pathlib import Path

import httpx
import pytest
from serving_checks import InProcessServer

from ptuning_v2.config import RunConfig
from ptuning_v2.serving.app import ServeConfig
from ptuning_v2.serving.multi_prompt import MultiPromptModel
from ptuning_v2.training.recipe import train_run

LONG = " ".join(["the movie was great"] * 20)


@pytest.fixture(scope="module")
def multi(checkpoints: dict[str, Path]) -> MultiPromptModel:
    return MultiPromptModel.from_checkpoints(checkpoints, device="cpu")


def expected(multi: MultiPromptModel, name: str, text: str) -> dict:
    entry = multi.tasks[name]
    (prediction,) = entry.task.predict(entry.model, [text])
    return prediction


@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_overlong_inputs_refused_with_their_index(multi, task) -> None:
    server = InProcessServer(multi, ServeConfig(overlong="refuse"))
    try:
        url = f"{server.url}/v1/tasks/{task}/predict"
        response = httpx.post(url, json={"inputs": ["good", LONG]})
        assert response.status_code == 422
        message = response.json()["error"]["message"]
        assert "input(s) [1]" in message and "train.max_length=16" in message and "refuses" in message
        response = httpx.post(url, json={"inputs": ["good"]})
        assert response.status_code == 200 and response.json()["outputs"][0]["text"] == "good"
    finally:
        server.stop()


def test_bad_inputs_are_422_naming_them_and_faults_are_500_with_the_request_id(
    multi, monkeypatch, caplog
) -> None:
    server = InProcessServer(multi, ServeConfig())
    url = f"{server.url}/v1/tasks/sentiment/predict"
    try:
        lone = httpx.post(url, content='{"inputs": ["good", "\\ud800"]}')  # JSON lets a lone surrogate in
        assert lone.status_code == 422
        assert (
            lone.json()["error"]["message"]
            == "the body holds a lone surrogate (\\ud800), which is not Unicode text"
        )
        pair = httpx.post(url, content='{"inputs": ["\\ud83d\\ude00 good"]}')  # a pair is one character
        assert pair.status_code == 200, pair.text
        mixed = httpx.post(url, json={"inputs": ["good", ["a", "b"]]})
        assert mixed.status_code == 422
        assert mixed.json()["error"]["message"].startswith(
            "inputs[1]: inputs mix single texts and sentence pairs"
        )

        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(multi, "run", broken)
        with caplog.at_level(logging.ERROR, logger="ptv2.serve"):
            fault = httpx.post(url, json={"inputs": ["good"]}, headers={"X-Request-ID": "bug-1"})
        assert fault.status_code == 500
        assert fault.json()["error"]["message"] == "internal server error (request id bug-1)"
        assert "request bug-1: error while answering" in caplog.text and "RuntimeError: a bug" in caplog.text
        assert httpx.get(f"{server.url}/docs").status_code == 404  # no undocumented paths
        assert httpx.get(f"{server.url}/openapi.json").status_code == 404
    finally:
        server.stop()


def test_full_queue_is_503_and_shutdown_answers_the_accepted_requests(multi) -> None:
    server = InProcessServer(multi, ServeConfig(max_queue=2, max_wait_ms=1500))
    jobs = [("sentiment", "the movie was great"), ("ner", "John met Mary in Paris.")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        accepted = [
            pool.submit(
                httpx.post, f"{server.url}/v1/tasks/{name}/predict", json={"inputs": [text]}, timeout=60
            )
            for name, text in jobs
        ]
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health").json()["in_flight"] < 2:
            assert time.monotonic() < deadline, "the two requests never arrived"
            time.sleep(0.01)
        # both wait (up to 1.5 s) for their batch to fill: the queue is full
        refused = httpx.post(f"{server.url}/v1/tasks/topic/predict", json={"inputs": ["the actor"]})
        assert refused.status_code == 503 and "queue is full" in refused.json()["error"]["message"]
        server.stop()  # while both are still waiting
        for future, (name, text) in zip(accepted, jobs, strict=True):
            response = future.result()
            assert response.status_code == 200, response.text
            assert response.json()["outputs"] == [expected(multi, name, text)]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_clients_with_batching_on_and_off(multi, batching) -> None:
    server = InProcessServer(multi, ServeConfig(batching=batching, max_wait_ms=5))
    texts = {
        "sentiment": ["the movie was great", "awful"],
        "topic": ["paris", "mary"],
        "ner": ["John in Paris"],
    }
    jobs = [(name, text) for _ in range(6) for name, items in texts.items() for text in items]
    try:
        with httpx.Client(timeout=60) as client:

            def ask(job: tuple[str, str]) -> dict:
                response = client.post(f"{server.url}/v1/tasks/{job[0]}/predict", json={"inputs": [job[1]]})
                assert response.status_code == 200, response.text
                return response.json()["outputs"][0]

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(ask, jobs))
        batches = httpx.get(f"{server.url}/health").json()["batches"]
    finally:
        server.stop()
    for (name, text), answer in zip(jobs, answers, strict=True):
        want = expected(multi, name, text)
        assert {k: v for k, v in answer.items() if k not in ("score", "probabilities")} == {
            k: v for k, v in want.items() if k not in ("score", "probabilities")
        }
        if "score" in want:
            assert answer["score"] == pytest.approx(want["score"], abs=1e-5)
    assert (batches < len(jobs)) if batching else (batches == len(jobs))


def test_generation_tasks_share_one_generate_call(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Two causal-LM prompts (k = 4 and 8) asked at once: one mixed batch, the tokens of each alone."""
    lines = [json.dumps({"source": s, "target": "great movie"}) for s in ["the movie", "a bad plot"] * 4]
    (tmp_path / "gen.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {"train": str(tmp_path / "gen.jsonl"), "validation": str(tmp_path / "gen.jsonl")}
    checkpoints = {}
    for name, length in (("short", 4), ("long", 8)):
        run = RunConfig.from_dict(
            {
                "model": str(tiny_llama_dir),
                "task": "causal_lm",
                "data": data,
                "prompt": {"num_virtual_tokens": length},
                "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "lr": 0.3},
                "task_options": {"max_new_tokens": 4},
            }
        )
        train_run(run, tmp_path / name, show_progress=False, evaluate_test=False)
        checkpoints[name] = tmp_path / name / "checkpoint"
    multi = MultiPromptModel.from_checkpoints(checkpoints, device="cpu")
    server = InProcessServer(multi, ServeConfig(max_wait_ms=500, model_threads=1))  # two: side by side
    jobs = [("short", ["the movie", {"source": "a bad plot"}]), ("long", ["the movie", "a good plot"])]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            responses = list(
                pool.map(
                    lambda job: httpx.post(
                        f"{server.url}/v1/tasks/{job[0]}/predict", json={"inputs": job[1]}, timeout=60
                    ),
                    jobs,
                )
            )
        batches = httpx.get(f"{server.url}/health").json()["batches"]
    finally:
        server.stop()
    assert batches == 1
    for (name, inputs), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        entry = multi.tasks[name]
        assert response.json()["outputs"] == entry.task.predict(entry.model, inputs)
