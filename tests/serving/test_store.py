"""``ptv2 serve --store``: names resolved strictly inside the store, tasks loaded on demand (once per cold
task, beside running batches), a cache bounded by count and bytes that never evicts a pinned task,
corrupt and replaced checkpoints, and the store never written."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from serving_checks import InProcessServer, cli_predict, metric

from ptuning_v2.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, TrainedCheckpoint
from ptuning_v2.config import ConfigError
from ptuning_v2.serving.app import ServeConfig
from ptuning_v2.serving.batching import Request, predict_requests
from ptuning_v2.serving.multi_prompt import MultiPromptModel, UnknownTaskError
from ptuning_v2.serving.store import PromptStore, open_backbone, read_whole

SENTIMENT = ["the movie was great", "awful film"]
TOPIC = ["a story about paris", "the actor"]


def predict(server, name: str, inputs: list[str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/tasks/{name}/predict", json={"inputs": inputs}, timeout=60)


def loaded(server) -> dict[str, bool]:
    return {t["name"]: t["loaded"] for t in httpx.get(f"{server.url}/v1/tasks").json()["tasks"]}


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_names_resolve_strictly_inside_the_store(store: Path, tmp_path: Path, checkpoints) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(checkpoints["sentiment"], outside)
    (store / "acme" / "escape").symlink_to(outside)  # a folder leading out
    (store / "acme" / "inner").symlink_to(store / "acme" / "sentiment")  # a link that stays inside
    half = store / "acme" / "halfway"  # its own JSON, but its weights lead out
    half.mkdir()
    shutil.copy(checkpoints["sentiment"] / CONFIG_FILE, half / CONFIG_FILE)
    (half / WEIGHTS_FILE).symlink_to(outside / WEIGHTS_FILE)
    shutil.copytree(checkpoints["sentiment"], store / ".hidden")
    prompts = PromptStore(store)
    assert prompts.names() == [
        "acme/inner",
        "acme/sentiment",
        "acme/topic",
        "beta/deep/sentiment",
        "beta/ner",
    ]
    assert prompts.folder("acme/inner") == (store / "acme" / "sentiment").resolve()
    refused = [
        "..",
        "../outside",
        "acme/../acme/sentiment",
        "/etc",
        str(outside),
        "acme//sentiment",
        "acme/./x",
    ]
    refused += ["acme/escape", "acme/halfway", ".hidden", "acme/nope", "acme", ""]
    for name in refused:
        with pytest.raises(UnknownTaskError, match="unknown task"):
            prompts.folder(name)


def test_names_leading_out_are_404_over_http(store: Path, tmp_path: Path, checkpoints, store_server) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(checkpoints["sentiment"], outside)
    (store / "acme" / "escape").symlink_to(outside)
    server = store_server()
    for name in ["acme/escape", "%2E%2E/outside", "acme/%2E%2E/acme/sentiment", "acme/nope"]:
        response = predict(server, name, ["good"])
        assert response.status_code == 404, (name, response.text)
        assert response.json()["error"]["message"].startswith("unknown task")
    assert predict(server, "acme/escape", ["x"]).json() == {
        "error": {"status": 404, "message": "unknown task 'acme/escape'"}
    }  # the same answer as a name that does not exist: nothing about the link
    assert predict(server, ".hidden/x", ["x"]).json()["error"]["message"] == "unknown task '.hidden/x'"
    assert "acme/escape" not in loaded(server)


def test_cold_tasks_load_once_and_answer_as_ptv2_predict(store: Path, checkpoints, store_server) -> None:
    before = tree_digest(store)
    server = store_server(max_loaded_tasks=10)
    real_add = server.multi.add
    server.multi.add = lambda name, folder: (
        time.sleep(1.0) or real_add(name, folder)
    )  # all 8 arrive meanwhile
    assert loaded(server) == dict.fromkeys(
        ["acme/sentiment", "acme/topic", "beta/deep/sentiment", "beta/ner"], False
    )
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: predict(server, "acme/topic", TOPIC), range(8)))
    expected = cli_predict(checkpoints["topic"], TOPIC)
    for response in responses:
        assert response.status_code == 200, response.text
        assert [o["label"] for o in response.json()["outputs"]] == [e["label"] for e in expected]
        assert [o["score"] for o in response.json()["outputs"]] == pytest.approx(
            [e["score"] for e in expected], abs=1e-5
        )
    assert metric(server.url, "ptv2_task_load_seconds_count") == 1  # eight requests, one load
    assert metric(server.url, "ptv2_task_cache_misses_total") == 8  # one loaded it, seven waited for it
    response = predict(server, "beta/deep/sentiment", SENTIMENT)
    assert [o["label"] for o in response.json()["outputs"]] == [
        e["label"] for e in cli_predict(checkpoints["sentiment"], SENTIMENT)
    ]
    assert loaded(server) == {
        "acme/topic": True,
        "beta/deep/sentiment": True,
        "acme/sentiment": False,
        "beta/ner": False,
    }
    assert tree_digest(store) == before  # the server never writes into the store


def test_least_recently_used_task_is_evicted_and_reloads(store_server, checkpoints) -> None:
    server = store_server(max_loaded_tasks=2)
    for name in ["acme/sentiment", "acme/topic", "acme/sentiment", "beta/ner"]:
        assert predict(server, name, ["the movie"]).status_code == 200
    assert loaded(server) == {
        "acme/sentiment": True,
        "beta/ner": True,
        "acme/topic": False,
        "beta/deep/sentiment": False,
    }
    assert metric(server.url, "ptv2_task_cache_evictions_total") == 1
    assert metric(server.url, "ptv2_loaded_tasks") == 2
    response = predict(server, "acme/topic", TOPIC)  # evicted: loads again
    assert [o["label"] for o in response.json()["outputs"]] == [
        e["label"] for e in cli_predict(checkpoints["topic"], TOPIC)
    ]
    assert metric(server.url, "ptv2_task_load_seconds_count") == 4
    assert len(server.multi.tasks) == 2


def test_the_byte_bound_unloads_what_does_not_fit_once_answered(store_server) -> None:
    server = store_server(cache_mb=1e-6)  # smaller than any task's prompt and head
    for name in ["acme/sentiment", "acme/topic", "acme/sentiment"]:
        assert predict(server, name, ["the movie"]).status_code == 200
        deadline = time.monotonic() + 10
        while any(loaded(server).values()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert metric(server.url, "ptv2_task_load_seconds_count") == 3
    assert metric(server.url, "ptv2_task_cache_evictions_total") == 3


def test_a_pinned_task_is_not_evicted_under_its_request(store_server, checkpoints) -> None:
    server = store_server(max_loaded_tasks=1, max_wait_ms=1500)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(predict, server, "acme/sentiment", SENTIMENT)
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health").json()["in_flight"] < 1:  # waiting in its batch, pinned
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = pool.submit(predict, server, "beta/ner", ["John in Paris"])
        responses = [first.result(), second.result()]
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert (
        responses[0].json()["outputs"][0]["label"]
        == cli_predict(checkpoints["sentiment"], SENTIMENT)[0]["label"]
    )
    assert responses[1].json()["outputs"] == cli_predict(checkpoints["ner"], ["John in Paris"])
    deadline = time.monotonic() + 10
    while sum(loaded(server).values()) > 1:  # back within its bound once the pin is released
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_corrupt_checkpoint_fails_alone_and_is_not_retried_in_a_loop(
    store: Path, store_server, checkpoints
) -> None:
    broken = store / "acme" / "broken"
    shutil.copytree(checkpoints["sentiment"], broken)
    whole = (broken / WEIGHTS_FILE).read_bytes()
    (broken / WEIGHTS_FILE).write_bytes(whole[: len(whole) // 2])  # half-written
    server = store_server()
    for _ in range(3):
        response = predict(server, "acme/broken", ["good"])
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert message.startswith("task 'acme/broken' cannot be loaded") and "damaged" in message
        assert int(response.headers["retry-after"]) >= 1
    assert metric(server.url, "ptv2_task_load_failures_total") == 1  # tried once, then backed off
    assert predict(server, "acme/topic", TOPIC).status_code == 200  # other tasks are unaffected
    fixed = broken / f".{WEIGHTS_FILE}.tmp"
    fixed.write_bytes(whole)
    os.replace(fixed, broken / WEIGHTS_FILE)  # replaced: tried again at once, not after the back-off
    response = predict(server, "acme/broken", SENTIMENT)
    assert response.status_code == 200, response.text
    assert [o["label"] for o in response.json()["outputs"]] == [
        e["label"] for e in cli_predict(checkpoints["sentiment"], SENTIMENT)
    ]


def test_a_replaced_checkpoint_is_read_on_its_next_load(store: Path, store_server, checkpoints) -> None:
    server = store_server()
    assert predict(server, "acme/sentiment", ["good"]).json()["outputs"][0]["label"] in ("pos", "neg")
    shutil.copytree(checkpoints["topic"], store / "acme" / ".new")
    os.rename(store / "acme" / "sentiment", store / "acme" / ".old")
    os.rename(store / "acme" / ".new", store / "acme" / "sentiment")
    assert predict(server, "acme/sentiment", ["good"]).json()["outputs"][0]["label"] in (
        "pos",
        "neg",
    )  # loaded
    assert httpx.delete(f"{server.url}/v1/tasks/acme/sentiment").json() == {"removed": "acme/sentiment"}
    assert loaded(server)["acme/sentiment"] is False
    response = predict(server, "acme/sentiment", TOPIC)
    assert [o["label"] for o in response.json()["outputs"]] == [
        e["label"] for e in cli_predict(checkpoints["topic"], TOPIC)
    ]


def test_files_that_change_during_a_read_are_read_again(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = store / "acme" / "sentiment"
    real_read, calls = TrainedCheckpoint.read, []

    def read_then_rewrite(directory: Path, times: int) -> TrainedCheckpoint:
        calls.append(directory)
        checkpoint = real_read(directory)
        if len(calls) <= times:  # a writer replaces the JSON (same content) while the checkpoint is read
            tmp = folder / f".{CONFIG_FILE}.tmp"
            tmp.write_bytes((folder / CONFIG_FILE).read_bytes())
            os.replace(tmp, folder / CONFIG_FILE)
        return checkpoint

    monkeypatch.setattr(TrainedCheckpoint, "read", lambda directory: read_then_rewrite(directory, 1))
    assert read_whole(folder).directory == folder and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(TrainedCheckpoint, "read", lambda directory: read_then_rewrite(directory, 99))
    with pytest.raises(CheckpointError, match="changed during each of 3 reads"):
        read_whole(folder)
    assert len(calls) == 3


def test_a_load_does_not_stall_batches_of_other_tasks(store_server) -> None:
    server = store_server()
    assert predict(server, "acme/sentiment", ["good"]).status_code == 200
    real_add = server.multi.add

    def slow_add(name, checkpoint):
        if name == "acme/topic":
            time.sleep(2.0)  # a slow disk
        return real_add(name, checkpoint)

    server.multi.add = slow_add
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        cold = pool.submit(predict, server, "acme/topic", TOPIC)
        time.sleep(0.3)
        for _ in range(3):
            started = time.perf_counter()
            assert predict(server, "acme/sentiment", SENTIMENT).status_code == 200
            assert time.perf_counter() - started < 1.0
        assert not cold.done()
        assert cold.result().status_code == 200


def test_adds_and_removes_beside_running_batches_change_no_answer(checkpoints) -> None:
    """What the loader thread relies on: adding and removing tasks while the model thread runs batches
    of other tasks changes none of their answers, and the backbone's install count stays right."""
    multi = MultiPromptModel.from_checkpoints(
        {"sentiment": checkpoints["sentiment"], "ner": checkpoints["ner"]}, device="cpu"
    )
    requests = [("sentiment", SENTIMENT), ("ner", ["John met Mary in Paris."])]
    reference = predict_requests(multi, [Request(t, list(x)) for t, x in requests], 32)
    stop, errors = threading.Event(), []

    def churn() -> None:
        try:
            for i in range(12):
                multi.add(f"topic-{i}", checkpoints["topic"])
                if i % 2:
                    multi.remove(f"topic-{i - 1}")
                    multi.remove(f"topic-{i}")
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=churn)
    thread.start()
    runs = 0
    while not stop.is_set() or runs < 3:
        results = predict_requests(multi, [Request(t, list(x)) for t, x in requests], 32)
        for got, want in zip(results, reference, strict=True):
            assert not isinstance(got, Exception), got
            assert [{k: v for k, v in o.items() if k not in ("score", "probabilities")} for o in got] == [
                {k: v for k, v in o.items() if k not in ("score", "probabilities")} for o in want
            ]
        runs += 1
    thread.join()
    assert not errors, errors
    assert sorted(multi.tasks) == ["ner", "sentiment"]
    assert multi.backbone._ptv2_installs == 1 + len(multi.tasks)  # the model's own injector + one per prompt


def test_post_with_a_store_takes_only_its_tasks(
    store: Path, tmp_path: Path, checkpoints, store_server
) -> None:
    server = store_server()
    shutil.copytree(checkpoints["topic"], tmp_path / "outside")
    for checkpoint in [str(tmp_path / "outside"), "../outside", str(store / "acme" / "topic")]:
        response = httpx.post(f"{server.url}/v1/tasks", json={"checkpoint": checkpoint})
        assert (
            response.status_code == 422 and "not a task of the store" in response.json()["error"]["message"]
        )
    response = httpx.post(f"{server.url}/v1/tasks", json={"checkpoint": "acme/topic", "name": "kept"})
    assert response.status_code == 201, response.text
    assert predict(server, "kept", TOPIC).status_code == 200
    assert loaded(server)["kept"] is True


def test_a_store_without_checkpoints_has_no_backbone(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        open_backbone({}, PromptStore(tmp_path / "empty"), None, "cpu")
    with pytest.raises(ConfigError, match="not a folder"):
        PromptStore(tmp_path / "nothing")


def test_post_without_a_store_does_not_tell_what_exists(tmp_path: Path, checkpoints) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    locked = tmp_path / "locked"
    shutil.copytree(checkpoints["sentiment"], locked)
    (locked / CONFIG_FILE).write_text("{not json", encoding="utf-8")
    multi = MultiPromptModel.from_checkpoints({"sentiment": checkpoints["sentiment"]}, device="cpu")
    server = InProcessServer(multi, ServeConfig())
    try:
        answers = set()
        for path in [tmp_path / "missing", tmp_path / "folder", tmp_path / "file", locked, Path("/etc")]:
            response = httpx.post(f"{server.url}/v1/tasks", json={"checkpoint": str(path), "name": "x"})
            assert response.status_code == 422
            answers.add(response.json()["error"]["message"].replace(str(path), "PATH"))
        assert answers == {"checkpoint 'PATH': not a readable checkpoint folder"}
    finally:
        server.stop()


def test_removing_a_task_whose_load_fails_meanwhile_is_404(store_server, monkeypatch) -> None:
    started, release = threading.Event(), threading.Event()

    def failing_read(folder: Path) -> TrainedCheckpoint:
        started.set()
        assert release.wait(30)
        raise CheckpointError(f"{folder}: damaged")

    monkeypatch.setattr("ptuning_v2.serving.store.read_whole", failing_read)
    server = store_server()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        asked = pool.submit(predict, server, "acme/sentiment", ["good"])
        assert started.wait(30)
        removed = pool.submit(httpx.delete, f"{server.url}/v1/tasks/acme/sentiment", timeout=60)
        time.sleep(0.2)  # the removal waits for the load in progress
        release.set()
        assert asked.result().status_code == 503
        response = removed.result()
    assert response.status_code == 404, response.text
    assert response.json()["error"]["message"] == "unknown task 'acme/sentiment'"
