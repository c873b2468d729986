"""``ptv2 serve --api-keys``: the keys file's checks, 401 without a valid key, 404 for a task outside the
key's patterns (the same answer as for a task that does not exist), 403 for a client key on admin
routes, 429 past a key's concurrency limit, and keys never logged."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ptuning_v2.config import ConfigError
from ptuning_v2.serving.auth import read_keys

ADMIN, ACME, SLOW = "admin-secret-0123456789", "acme-secret-0123456789", "slow-secret-0123456789"


def keys_file(tmp_path: Path, entries: list | object) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(
        yaml.safe_dump({"keys": entries} if isinstance(entries, list) else entries), encoding="utf-8"
    )
    return path


@pytest.fixture
def keys(tmp_path: Path):
    return read_keys(
        keys_file(
            tmp_path,
            [
                {"name": "ops", "key": ADMIN, "role": "admin"},
                {
                    "name": "acme",
                    "sha256": hashlib.sha256(ACME.encode()).hexdigest(),
                    "role": "client",
                    "tasks": ["acme/*"],
                },
                {"name": "slow", "key": SLOW, "role": "client", "tasks": ["acme/*"], "max_concurrent": 1},
            ],
        )
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "content, words",
    [
        ([{"name": "a", "key": "short", "role": "client", "tasks": ["*"]}], "at least 16 characters"),
        ([{"name": "a", "key": ADMIN, "role": "root"}], "role: expected admin or client"),
        ([{"name": "a", "key": ADMIN, "role": "client"}], "tasks: expected a list"),
        ([{"name": "a", "key": ADMIN, "sha256": "ab", "role": "admin"}], "exactly one of key and sha256"),
        ([{"name": "a", "sha256": "xyz", "role": "admin"}], "sha256: expected 64 hexadecimal digits"),
        ([{"name": "a", "key": ADMIN, "role": "admin", "limit": 3}], "unknown field(s) ['limit']"),
        ([{"name": "a", "key": ADMIN, "role": "admin", "max_concurrent": 0}], "max_concurrent"),
        (
            [{"name": "a", "key": ADMIN, "role": "admin"}, {"name": "a", "key": ACME, "role": "admin"}],
            "same name a",
        ),
        (
            [{"name": "a", "key": ADMIN, "role": "admin"}, {"name": "b", "key": ADMIN, "role": "admin"}],
            "same key",
        ),
        ([{"name": "a", "key": "clé-secrète-0123456789", "role": "admin"}], "printable ASCII"),
        ([{"name": "a", "key": "  spaced-secret-0123456789", "role": "admin"}], "no spaces"),
        ({"users": []}, "expected a mapping with one entry, keys"),
        ([], "expected a mapping with one entry, keys"),
    ],
)
def test_keys_file_errors_name_the_entry(tmp_path: Path, content, words) -> None:
    with pytest.raises(ConfigError) as raised:
        read_keys(keys_file(tmp_path, content))
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert ADMIN not in str(raised.value)  # a key is never repeated back


def test_unreadable_or_broken_keys_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        read_keys(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("keys: [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_keys(tmp_path / "bad.yaml")


def test_keys_are_found_by_digest(keys) -> None:
    assert keys.find(ADMIN).name == "ops" and keys.find(ACME).name == "acme"
    assert keys.find("nope") is None and keys.find(ADMIN + "x") is None
    acme = keys.find(ACME)
    assert acme.may_use("acme/sentiment") and acme.may_use("acme/deep/x") and not acme.may_use("beta/ner")


def test_without_a_key_401_and_health_stays_open(store_server, keys) -> None:
    server = store_server(api_keys=keys)
    for headers in [
        None,
        bearer("wrong-key-0123456789"),
        {"Authorization": ADMIN},
        {"Authorization": "Basic x"},
    ]:
        for method, path in [
            ("POST", "/v1/tasks/acme/sentiment/predict"),
            ("GET", "/v1/tasks"),
            ("GET", "/metrics"),
        ]:
            response = httpx.request(method, f"{server.url}{path}", json={"inputs": ["x"]}, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert (
                response.json()["error"]["status"] == 401
                and "Authorization: Bearer" in response.json()["error"]["message"]
            )
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_client_sees_only_its_tasks(store_server, keys) -> None:
    server = store_server(api_keys=keys)
    url = f"{server.url}/v1/tasks"
    ok = httpx.post(f"{url}/acme/sentiment/predict", json={"inputs": ["good"]}, headers=bearer(ACME))
    assert ok.status_code == 200, ok.text
    hidden = httpx.post(f"{url}/beta/ner/predict", json={"inputs": ["John"]}, headers=bearer(ACME))
    missing = httpx.post(f"{url}/beta/nothing/predict", json={"inputs": ["John"]}, headers=bearer(ACME))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["message"].replace("beta/ner", "X") == missing.json()["error"][
        "message"
    ].replace("beta/nothing", "X")
    names = {t["name"] for t in httpx.get(url, headers=bearer(ACME)).json()["tasks"]}
    assert names == {"acme/sentiment", "acme/topic"}
    every = {t["name"] for t in httpx.get(url, headers=bearer(ADMIN)).json()["tasks"]}
    assert every == {"acme/sentiment", "acme/topic", "beta/ner", "beta/deep/sentiment"}
    # the admin sees every task (and the hidden task was never loaded for the client)
    assert (
        httpx.post(f"{url}/beta/ner/predict", json={"inputs": ["John"]}, headers=bearer(ADMIN)).status_code
        == 200
    )


def test_admin_routes_need_an_admin_key(store_server, keys) -> None:
    server = store_server(api_keys=keys)
    url = f"{server.url}/v1/tasks"
    body = {"checkpoint": "acme/topic", "name": "acme/kept"}
    for response in [
        httpx.post(url, json=body, headers=bearer(ACME)),
        httpx.delete(f"{url}/acme/sentiment", headers=bearer(ACME)),
        httpx.get(f"{server.url}/metrics", headers=bearer(ACME)),
    ]:
        assert response.status_code == 403 and "admin key" in response.json()["error"]["message"]
    assert httpx.post(url, json=body, headers=bearer(ADMIN)).status_code == 201
    assert httpx.delete(f"{url}/acme/kept", headers=bearer(ADMIN)).json() == {"removed": "acme/kept"}
    assert httpx.get(f"{server.url}/metrics", headers=bearer(ADMIN)).status_code == 200


def test_past_its_limit_a_key_gets_429(store_server, keys) -> None:
    server = store_server(api_keys=keys, max_wait_ms=1500)
    url = f"{server.url}/v1/tasks/acme/sentiment/predict"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url, json={"inputs": ["good"]}, headers=bearer(SLOW), timeout=60)
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health").json()["in_flight"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = httpx.post(url, json={"inputs": ["good"]}, headers=bearer(SLOW))
        other = httpx.post(url, json={"inputs": ["good"]}, headers=bearer(ACME), timeout=60)  # its own limit
        assert first.result().status_code == 200
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "'slow' already has 1 requests in flight" in refused.json()["error"]["message"]
    assert other.status_code == 200
    assert httpx.post(url, json={"inputs": ["good"]}, headers=bearer(SLOW)).status_code == 200  # freed again


def test_keys_are_never_logged(store_server, keys, caplog) -> None:
    server = store_server(api_keys=keys)
    with caplog.at_level(logging.INFO, logger="ptv2.access"):
        httpx.post(
            f"{server.url}/v1/tasks/acme/sentiment/predict", json={"inputs": ["good"]}, headers=bearer(ACME)
        )
        httpx.get(f"{server.url}/v1/tasks", headers=bearer("wrong-key-0123456789"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ptv2.access"]
    assert [(line["key"], line["status"]) for line in lines] == [("acme", 200), (None, 401)]
    assert not any(secret in caplog.text for secret in (ACME, "wrong-key-0123456789"))
