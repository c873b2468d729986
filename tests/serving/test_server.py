"""``ptv2 serve`` as a real process on a loopback port, talked to over HTTP: every endpoint, every error,
answers equal to ``ptv2 predict``, and concurrent clients over three tasks in mixed-task batches."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from serving_checks import NER, SENTIMENT, TOPIC, cli_predict, same_prediction

from ptuning_v2.serving.loadtest import measure, same_answer

LONG = " ".join(["the movie was great"] * 20)  # more than train.max_length (16) tokens: truncated


@pytest.fixture(scope="module")
def server(checkpoints: dict[str, Path], server_factory):
    return server_factory(
        "--prompts",
        *(str(checkpoints[name]) for name in ("sentiment", "topic", "ner")),
        "--names", "sentiment", "topic", "ner",
        "--max-inputs", "8",
        "--max-input-chars", "500",
    )  # fmt: skip


def post(server, path: str, body) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx.post(f"{server.url}{path}", content=content, timeout=60)


def test_health_and_task_list(server, checkpoints) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["tasks"] == 3
    tasks = {t["name"]: t for t in httpx.get(f"{server.url}/v1/tasks").json()["tasks"]}
    assert set(tasks) == {"sentiment", "topic", "ner"}
    assert tasks["sentiment"] == {
        "name": "sentiment",
        "loaded": True,
        "task": "classification",
        "labels": ["neg", "pos"],
        "prompt_length": 8,
        "method": "ptuning_v2",
        "checkpoint": str(checkpoints["sentiment"]),
    }
    assert tasks["topic"]["labels"] == ["city", "film", "people"] and tasks["topic"]["prompt_length"] == 32
    assert tasks["ner"]["task"] == "ner" and tasks["ner"]["prompt_length"] == 4
    assert {"B-PER", "B-LOC", "O"} <= set(tasks["ner"]["labels"])


@pytest.mark.parametrize("name, inputs", [("sentiment", [*SENTIMENT, LONG]), ("topic", TOPIC), ("ner", NER)])
def test_answers_equal_ptv2_predict(server, checkpoints, name, inputs) -> None:
    response = post(server, f"/v1/tasks/{name}/predict", {"inputs": inputs})
    assert response.status_code == 200, response.text
    served = response.json()["outputs"]
    expected = cli_predict(checkpoints[name], inputs)
    assert len(served) == len(expected) == len(inputs)
    for got, want in zip(served, expected, strict=True):
        same_prediction(got, want)


def test_load_test_over_three_tasks_every_answer_its_own(server, checkpoints) -> None:
    """The load test's clients (16, 96 requests over 3 tasks, mixed-task batches): every answer is the
    one for its own input and task, none lost, swapped or duplicated."""
    inputs = {"sentiment": SENTIMENT, "topic": TOPIC, "ner": NER}
    expected = {name: cli_predict(checkpoints[name], texts) for name, texts in inputs.items()}
    jobs = [(name, i % 3) for i in range(32) for name in inputs]
    before = httpx.get(f"{server.url}/health").json()["batches"]
    result = asyncio.run(measure(server.url, jobs, inputs, expected, clients=16, max_seconds=120))
    assert result["answered"] == result["requests"] == 96
    assert result["wrong"] == result["lost"] == result["duplicated_or_swapped"] == 0, result["failures"]
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert httpx.get(f"{server.url}/health").json()["batches"] - before < 96  # requests shared batches


def test_load_test_tells_a_swapped_answer_from_a_wrong_one() -> None:
    want = {"text": "a", "label": "pos", "score": 0.75}
    assert same_answer({"text": "a", "label": "pos", "score": 0.75 + 5e-5}, want)
    assert not same_answer({"text": "a", "label": "neg", "score": 0.75}, want)
    assert not same_answer({"text": "a", "label": "pos", "score": 0.76}, want)
    assert not same_answer({"text": "a", "label": "pos"}, want)


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/v1/tasks/nope/predict", {"inputs": ["x"]}, 404, "unknown task 'nope'"),
        ("/v1/tasks/sentiment/predict", '{"inputs": [', 422, "not valid JSON"),
        ("/v1/tasks/sentiment/predict", {"texts": ["x"]}, 422, '{"inputs": [...]}'),
        ("/v1/tasks/sentiment/predict", {"inputs": "x"}, 422, '{"inputs": [...]}'),
        ("/v1/tasks/sentiment/predict", {"inputs": []}, 422, "at least one input"),
        ("/v1/tasks/sentiment/predict", {"inputs": ["a", 3]}, 422, "inputs[1]"),
        ("/v1/tasks/sentiment/predict", {"inputs": [["a", "b", "c"]]}, 422, "pair of texts"),
        ("/v1/tasks/ner/predict", {"inputs": [["a", "b"]]}, 422, "an NER input is a text"),
        ("/v1/tasks/sentiment/predict", {"inputs": ["x"] * 9}, 413, "at most 8"),
        ("/v1/tasks/sentiment/predict", {"inputs": ["x" * 501]}, 413, "501 characters"),
        ("/v1/tasks", {"checkpoint": "/no/such/folder"}, 422, "/no/such/folder"),
        ("/v1/tasks", {"path": "x"}, 422, "checkpoint"),
        ("/v1/tasks", {"checkpoint": "x", "name": "ner"}, 409, "already loaded"),
    ],
)
def test_errors_are_json_with_their_status(server, path, body, status, words) -> None:
    response = post(server, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and words in error["message"]


def test_unknown_route_and_delete_of_unknown_task_are_404(server) -> None:
    assert httpx.get(f"{server.url}/v2/nothing").json()["error"]["status"] == 404
    response = httpx.delete(f"{server.url}/v1/tasks/nope")
    assert response.status_code == 404 and "unknown task" in response.json()["error"]["message"]


def test_add_and_remove_a_task_at_run_time(server, checkpoints) -> None:
    response = post(server, "/v1/tasks", {"name": "sentiment2", "checkpoint": str(checkpoints["sentiment"])})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "sentiment2" and response.json()["labels"] == ["neg", "pos"]
    served = post(server, "/v1/tasks/sentiment2/predict", {"inputs": SENTIMENT}).json()["outputs"]
    for got, want in zip(served, cli_predict(checkpoints["sentiment"], SENTIMENT), strict=True):
        same_prediction(got, want)
    assert httpx.delete(f"{server.url}/v1/tasks/sentiment2").json() == {"removed": "sentiment2"}
    assert post(server, "/v1/tasks/sentiment2/predict", {"inputs": ["x"]}).status_code == 404
    names = {t["name"] for t in httpx.get(f"{server.url}/v1/tasks").json()["tasks"]}
    assert names == {"sentiment", "topic", "ner"}
    # the other tasks are untouched
    served = post(server, "/v1/tasks/ner/predict", {"inputs": NER}).json()["outputs"]
    assert served == cli_predict(checkpoints["ner"], NER)


def test_sigterm_ends_the_process_cleanly(server) -> None:
    assert server.stop() == 0


def test_serve_arguments_are_checked_before_loading(checkpoints, capsys) -> None:
    from ptuning_v2.cli.main import main

    sentiment, ner = str(checkpoints["sentiment"]), str(checkpoints["ner"])
    assert main(["serve", "--prompts", sentiment, ner, "--names", "one"]) == 2
    assert "--names: 1 names for 2 --prompts folders" in capsys.readouterr().err
    assert main(["serve", "--prompts", sentiment, sentiment]) == 2
    assert "same task name" in capsys.readouterr().err
    assert main(["serve", "--prompts", sentiment, "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
