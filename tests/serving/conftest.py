"""Three tiny tasks trained once on the tiny BERT (two classifications with different label sets and
prompt lengths, and NER), and servers started on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from launching import free_port
from serving_checks import InProcessServer

from ptuning_v2.config import RunConfig
from ptuning_v2.serving.app import ServeConfig
from ptuning_v2.training.recipe import train_run

POSITIVE, NEGATIVE = ["good", "great", "fun", "best"], ["bad", "awful", "boring", "worst"]
TOPICS = {
    "city": ["paris", "london", "berlin"],
    "people": ["john", "mary"],
    "film": ["movie", "film", "actor"],
}
NER_WORDS = {"B-PER": ["John", "Mary"], "B-LOC": ["Paris", "London", "Berlin"], "O": ["the", "is", "in", "a"]}


def write_csv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    return str(path)


def write_conll(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        for _ in range(rng.randint(3, 6)):
            tag = rng.choice(list(NER_WORDS))
            lines.append(f"{rng.choice(NER_WORDS[tag])} {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def train(model: Path, task: str, files: dict[str, str], prompt_length: int, out: Path) -> Path:
    run = RunConfig.from_dict(
        {
            "model": str(model),
            "task": task,
            "data": files,
            "prompt": {"num_virtual_tokens": prompt_length},
            "train": {"max_steps": 12, "batch_size": 16, "eval_every": 12, "max_length": 16, "lr": 3e-2},
        }
    )
    train_run(run, out, show_progress=False, evaluate_test=False)
    return out / "checkpoint"


@pytest.fixture(scope="session")
def checkpoints(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"sentiment": k = 8, 2 labels; "topic": k = 32, 3 labels; "ner": k = 4}`` checkpoint folders."""
    root = tmp_path_factory.mktemp("serving")
    rng = random.Random(0)
    sentiment = [(f"the movie was {rng.choice(POSITIVE if i % 2 else NEGATIVE)}", "pos" if i % 2 else "neg")
                 for i in range(48)]  # fmt: skip
    topic = [
        (f"a story about {rng.choice(words)}", label) for label, words in TOPICS.items() for _ in range(16)
    ]
    return {
        "sentiment": train(tiny_bert_dir, "classification",
                           {"train": write_csv(root / "s.csv", sentiment), "validation": write_csv(root / "sv.csv", sentiment[:8])},
                           8, root / "sentiment"),
        "topic": train(tiny_bert_dir, "classification",
                       {"train": write_csv(root / "t.csv", topic), "validation": write_csv(root / "tv.csv", topic[::6])},
                       32, root / "topic"),
        "ner": train(tiny_bert_dir, "ner",
                     {"train": write_conll(root / "n.conll", 32, 0), "validation": write_conll(root / "nv.conll", 8, 1)},
                     4, root / "ner"),
    }  # fmt: skip


class ServerProcess:
    """``python -m ptuning_v2.cli.main serve ...`` on a free loopback port, ready when /health answers."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "ptuning_v2.cli.main", "serve", "--port", str(self.port), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start:\n{log.read_text()}")

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown), the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(list(args), tmp_path_factory.mktemp("server") / "server.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def store(tmp_path: Path, checkpoints: dict[str, Path]) -> Path:
    """A prompt store of copies of the three checkpoints, in namespaces (one two levels deep)."""
    import shutil

    root = tmp_path / "store"
    layout = {
        "acme/sentiment": "sentiment",
        "acme/topic": "topic",
        "beta/ner": "ner",
        "beta/deep/sentiment": "sentiment",
    }
    for name, base in layout.items():
        shutil.copytree(checkpoints[base], root / name)
    return root


@pytest.fixture
def store_server(store: Path) -> Iterator:
    """Start an in-process server on ``store`` (its own backbone) with ServeConfig options."""
    from ptuning_v2.serving.store import PromptStore, open_backbone

    started: list[InProcessServer] = []

    def start(**options) -> InProcessServer:
        multi = open_backbone({}, PromptStore(store), None, "cpu")
        server = InProcessServer(multi, ServeConfig(store=str(store), **options))
        server.multi = multi
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
