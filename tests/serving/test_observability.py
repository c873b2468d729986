"""What the server shows: request ids, one JSON access-log line per request (no input text unless asked),
Prometheus metrics, and JSON errors for bodies too deep to parse and for the server's own faults."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from serving_checks import InProcessServer, metric

from ptuning_v2.serving import app as app_module
from ptuning_v2.serving.app import ServeConfig
from ptuning_v2.serving.multi_prompt import MultiPromptModel


@pytest.fixture(scope="module")
def multi(checkpoints: dict[str, Path]) -> MultiPromptModel:
    return MultiPromptModel.from_checkpoints({"sentiment": checkpoints["sentiment"]}, device="cpu")


@pytest.fixture
def server(multi):
    server = InProcessServer(multi, ServeConfig())
    yield server
    server.stop()


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "ptv2.access"]


def test_request_ids_are_kept_or_made_and_returned(server) -> None:
    url = f"{server.url}/v1/tasks/sentiment/predict"
    kept = httpx.post(url, json={"inputs": ["good"]}, headers={"X-Request-ID": "client-42"})
    assert kept.headers["x-request-id"] == "client-42"
    made = httpx.post(url, json={"inputs": ["good"]})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    for bad in ["x" * 200, "two words", 'quote"']:
        replaced = httpx.get(f"{server.url}/health", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    errors = httpx.post(url, json={"nope": 1}, headers={"X-Request-ID": "bad-body"})  # errors carry it too
    assert errors.status_code == 422 and errors.headers["x-request-id"] == "bad-body"


def test_one_json_access_log_line_per_request_without_input_text(server, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="ptv2.access"):
        httpx.post(f"{server.url}/v1/tasks/sentiment/predict", json={"inputs": ["a secret text", "b"]},
                   headers={"X-Request-ID": "r1"})  # fmt: skip
        httpx.post(
            f"{server.url}/v1/tasks/nope/predict", json={"inputs": ["x"]}, headers={"X-Request-ID": "r2"}
        )
    first, second = access_lines(caplog)
    assert {k: first[k] for k in ("request_id", "method", "path", "task", "status", "inputs", "key")} == {
        "request_id": "r1",
        "method": "POST",
        "path": "/v1/tasks/sentiment/predict",
        "task": "sentiment",
        "status": 200,
        "inputs": 2,
        "key": None,
    }
    assert first["ms"] > 0 and "secret" not in caplog.text
    assert (second["request_id"], second["task"], second["status"]) == ("r2", None, 404)


def test_inputs_are_logged_only_when_asked(multi, caplog) -> None:
    server = InProcessServer(multi, ServeConfig(log_inputs=True))
    try:
        with caplog.at_level(logging.INFO, logger="ptv2.access"):
            httpx.post(f"{server.url}/v1/tasks/sentiment/predict", json={"inputs": ["a logged text"]})
    finally:
        server.stop()
    (line,) = access_lines(caplog)
    assert line["input_values"] == ["a logged text"]


def test_metrics_in_prometheus_text_format(server) -> None:
    for _ in range(3):
        httpx.post(f"{server.url}/v1/tasks/sentiment/predict", json={"inputs": ["good", "bad"]})
    httpx.post(f"{server.url}/v1/tasks/nope/predict", json={"inputs": ["x"]})
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/v1/tasks/{task:path}/predict"
    assert f'ptv2_requests_total{{route="{route}",status="200",task="sentiment"}} 3.0' in text
    assert (
        f'ptv2_requests_total{{route="{route}",status="404",task=""}} 1.0' in text
    )  # unknown names stay out
    assert metric(server.url, "ptv2_request_seconds_count") >= 4
    assert metric(server.url, "ptv2_batch_rows_count") == 3 and metric(server.url, "ptv2_batch_rows_sum") == 6
    assert metric(server.url, "ptv2_loaded_tasks") == 1
    assert metric(server.url, "ptv2_queue_depth") == 0
    for name in (
        "ptv2_task_cache_hits_total",
        "ptv2_task_cache_evictions_total",
        "ptv2_task_load_seconds_bucket",
    ):
        assert name in text


def test_a_body_nested_too_deep_is_a_json_422(server) -> None:
    body = '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = httpx.post(f"{server.url}/v1/tasks/sentiment/predict", content=body)
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "the body is not valid JSON: nested too deeply"


def test_a_fault_of_the_server_is_a_json_500_naming_the_request(server, monkeypatch, caplog) -> None:
    def broken(entry):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_module, "describe", broken)
    with caplog.at_level(logging.ERROR, logger="ptv2.serve"):
        response = httpx.get(f"{server.url}/v1/tasks", headers={"X-Request-ID": "oops"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "oops"
    assert response.json() == {
        "error": {
            "status": 500,
            "message": "internal server error (request id oops)",
            "type": "server_error",
            "code": None,
        }
    }
    assert "request oops: unhandled error" in caplog.text and "RuntimeError: a bug" in caplog.text
    assert httpx.get(f"{server.url}/health").status_code == 200
