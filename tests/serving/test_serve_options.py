"""``ptv2 serve``'s options are checked before the backbone loads, each with one line: the port, the host
(loopback only without API keys, unless --insecure), the keys file, the store; and a store served by
the real command, with keys, from a process."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from ptuning_v2.cli.main import main

NOWHERE = "/no/such/checkpoint"  # loading it would fail: an error about anything else came first


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.startswith("ptv2 serve: error: ") and "\n" not in error, error
    return error


@pytest.mark.parametrize(
    "args, words",
    [
        (["--port", "99999"], "--port 99999: expected a port number from 1 to 65535"),
        (["--port", "0"], "--port 0: expected a port number"),
        (
            ["--host", "0.0.0.0"],
            "--host 0.0.0.0 is reachable from other machines and this server has no --api-keys",
        ),
        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: not an address of this machine"),
        (["--api-keys", "/no/such/keys.yaml"], "--api-keys /no/such/keys.yaml: cannot read it"),
        (["--max-loaded-tasks", "0"], "--max-loaded-tasks: expected a positive number"),
        (["--cache-mb", "0"], "--cache-mb: expected a positive number"),
        (["--model-threads", "0"], "--model-threads: expected a positive number"),
        (["--ray", "--decode-batching"], "--decode-batching is for one process"),
        (["--names", "bad name"], "--names: task name 'bad name': use letters, digits"),
    ],
)
def test_options_are_checked_before_loading(args, words, capsys) -> None:
    assert main(["serve", "--prompts", NOWHERE, *args]) == 2
    assert words in one_line_error(capsys)


@pytest.mark.parametrize("flag", ["--max-wait-ms", "--cache-mb"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_numbers_that_never_end_a_wait_are_refused(flag, value, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:  # argparse's own refusal of a value
        main(["serve", "--prompts", NOWHERE, flag, value])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"ptv2 serve: error: argument {flag}: expected a finite number, got {value!r}"


def test_a_folder_whose_name_is_no_task_name_is_refused_before_loading(capsys) -> None:
    assert main(["serve", "--prompts", "/no/such/my run/checkpoint"]) == 2
    error = one_line_error(capsys)
    assert "--prompts /no/such/my run/checkpoint: the task is named after its folder" in error
    assert "name it with --names" in error


def test_a_port_another_server_holds_is_refused_before_loading(capsys) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", "--prompts", NOWHERE, "--port", str(port)]) == 2
    assert f"--port {port}: cannot listen on 127.0.0.1" in one_line_error(capsys)


def test_refusing_a_public_host_says_how_to_allow_it(capsys) -> None:
    assert main(["serve", "--prompts", NOWHERE, "--host", "0.0.0.0"]) == 2
    error = one_line_error(capsys)
    assert "give --api-keys FILE, or --insecure" in error
    # --insecure (or keys) passes the check: the next error is the checkpoint's
    assert main(["serve", "--prompts", NOWHERE, "--host", "0.0.0.0", "--insecure"]) == 2
    assert "not a ptuning-v2 checkpoint" in one_line_error(capsys)


def test_store_must_be_a_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert main(["serve", "--store", str(tmp_path / "file")]) == 2
    assert f"--store {tmp_path / 'file'}: not a folder" in one_line_error(capsys)
    assert main(["serve", "--store", str(tmp_path / "missing")]) == 2
    assert "not a folder" in one_line_error(capsys)


def test_serve_a_store_with_keys_from_the_command(store: Path, tmp_path: Path, server_factory) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {name: acme, key: acme-secret-0123456789, role: client, tasks: ['acme/*']}\n")
    server = server_factory("--store", str(store), "--api-keys", str(keys), "--max-loaded-tasks", "1")
    headers = {"Authorization": "Bearer acme-secret-0123456789", "X-Request-ID": "from-test"}
    response = httpx.post(
        f"{server.url}/v1/tasks/acme/topic/predict", json={"inputs": ["paris"]}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert httpx.post(f"{server.url}/v1/tasks/acme/topic/predict", json={"inputs": ["x"]}).status_code == 401
    assert server.stop() == 0
    log = server.log.read_text()
    assert '"request_id": "from-test"' in log and '"task": "acme/topic"' in log and '"cache": "miss"' in log
    assert "acme-secret" not in log
