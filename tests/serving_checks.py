"""What the serving tests send and compare against: inputs of the three tiny tasks (the serving conftest's
``checkpoints``), ``ptv2 predict``'s own answers, an in-process server and its metrics."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from launching import free_port

from ptuning_v2.cli.main import main
from ptuning_v2.serving.app import ServeConfig, create_app
from ptuning_v2.serving.multi_prompt import MultiPromptModel

SENTIMENT = ["the movie was great", "awful film", "a boring story with a worst plot"]
TOPIC = ["a story about paris", "a story about mary", "the actor"]
NER = ["John met Mary in Paris.", "Berlin is in the north", "nothing here"]


def cli_predict(checkpoint: Path, inputs: list[str]) -> list[dict]:
    """What ``ptv2 predict CHECKPOINT INPUT ...`` prints, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["predict", str(checkpoint), *inputs]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def same_prediction(served: dict, expected: dict) -> None:
    """Equal but for float rounding: a row's scores can move in the last bits with the batch it is in."""
    assert served.keys() == expected.keys()
    for key, value in expected.items():
        if key in ("score", "probabilities"):
            assert served[key] == pytest.approx(value, abs=1e-5)
        else:
            assert served[key] == value, key


class InProcessServer:
    """The real app served by uvicorn over loopback HTTP in a thread of this process."""

    def __init__(self, multi: MultiPromptModel, config: ServeConfig) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(multi, config), host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """What uvicorn does on SIGTERM: stop accepting, finish the open requests, shut the app down."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def metric(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    """The sum of a metric's samples named ``name`` (all labels) in the server's ``/metrics``."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    )
