"""The dispatcher's model threads, with the model replaced by a recorder: requests that arrive together are
shared over the idle threads and run at once, a ``call`` (a generation) takes a thread of its own beside
them, and ``ptv2 serve`` splits the CPU threads between the model threads."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from ptuning_v2.serving import app
from ptuning_v2.serving.app import Dispatcher
from ptuning_v2.serving.engine import ServeConfig, split_cpu_threads


class Recorder:
    """Stands in for ``predict_requests``: records each batch's size and how many batches overlap."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []
        self.events: list = []
        """Each batch's inputs, in the order the batches started (and whatever else a test appends)."""
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, multi, requests, max_rows, refuse_overlong=False, on_pass=None) -> list:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.sizes.append(len(requests))
            self.events.append(sorted(r.inputs[0] for r in requests))
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return [[{"task": r.task, "input": r.inputs[0]}] for r in requests]


def backbone(kind: str = "encoder") -> SimpleNamespace:
    return SimpleNamespace(kind=kind, device=torch.device("cpu"))


async def answer_all(dispatcher: Dispatcher, count: int) -> list:
    dispatcher.start()
    try:
        return await asyncio.gather(*(dispatcher.predict("t", [i]) for i in range(count)))
    finally:
        await dispatcher.stop()


def test_requests_arriving_together_are_shared_over_the_model_threads(monkeypatch) -> None:
    recorder = Recorder(seconds=0.2)
    monkeypatch.setattr(app, "predict_requests", recorder)
    dispatcher = Dispatcher(backbone(), ServeConfig(model_threads=2, max_wait_ms=50))
    answers = asyncio.run(answer_all(dispatcher, 16))
    assert answers == [[{"task": "t", "input": i}] for i in range(16)]  # each its own answer, in order
    assert recorder.sizes == [8, 8] and recorder.most == 2


def test_one_model_thread_runs_one_batch(monkeypatch) -> None:
    recorder = Recorder(seconds=0.05)
    monkeypatch.setattr(app, "predict_requests", recorder)
    dispatcher = Dispatcher(backbone(), ServeConfig(model_threads=1, max_wait_ms=50))
    asyncio.run(answer_all(dispatcher, 16))
    assert recorder.sizes == [16] and recorder.most == 1


def test_every_backbone_runs_model_threads_batches_at_once() -> None:
    assert Dispatcher(backbone("causal_lm"), ServeConfig(model_threads=4)).threads == 4
    assert Dispatcher(backbone("encoder"), ServeConfig(model_threads=4)).threads == 4


def test_a_call_takes_a_model_thread_of_its_own(monkeypatch) -> None:
    """A call (a generation) runs beside the batches on one model thread; a batch that arrives meanwhile
    takes the other, and a call that finds every thread busy waits for one."""
    recorder = Recorder(seconds=0.2)
    monkeypatch.setattr(app, "predict_requests", recorder)
    dispatcher = Dispatcher(backbone("causal_lm"), ServeConfig(model_threads=2, max_wait_ms=1))

    def generation(name: str) -> str:
        with recorder.lock:
            recorder.running += 1
            recorder.most = max(recorder.most, recorder.running)
            recorder.events.append(name)
        time.sleep(0.2)
        with recorder.lock:
            recorder.running -= 1
        return name

    async def scenario() -> list:
        dispatcher.start()
        first = asyncio.ensure_future(dispatcher.call(generation, "first call"))
        await asyncio.sleep(0.05)
        batch = [asyncio.ensure_future(dispatcher.predict("t", [i])) for i in range(4)]
        await asyncio.sleep(0.05)  # both threads are busy now
        second = asyncio.ensure_future(dispatcher.call(generation, "second call"))
        results = await asyncio.gather(first, *batch, second)
        await dispatcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results[0] == "first call" and results[-1] == "second call"
    assert recorder.events == ["first call", [0, 1, 2, 3], "second call"]
    assert recorder.most == 2  # the call beside the batch, never three at once


@pytest.mark.parametrize(
    "kind, threads, expected", [("encoder", 2, 1), ("causal_lm", 2, 1), ("encoder", 1, 2)]
)
def test_serve_splits_the_cpu_threads_between_the_model_threads(kind, threads, expected) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert split_cpu_threads(backbone(kind), ServeConfig(model_threads=threads)) == expected
    finally:
        torch.set_num_threads(before)


def test_stop_answers_the_calls_that_wait_for_a_thread() -> None:
    """Shutting down while a call runs and others wait for the thread: each is answered (an error is its
    caller's), and one whose caller went away still ends before the threads do."""
    dispatcher = Dispatcher(backbone("causal_lm"), ServeConfig(model_threads=1))
    ended = []

    def generation(name: str) -> str:
        time.sleep(0.1)
        ended.append(name)
        if name == "failing":
            raise ValueError(name)
        return name

    async def scenario() -> list:
        dispatcher.start()
        names = ("first", "second", "failing", "abandoned")
        calls = [asyncio.ensure_future(dispatcher.call(generation, name)) for name in names]
        await asyncio.sleep(0.05)
        calls[-1].cancel()
        await dispatcher.stop()
        return await asyncio.gather(*calls[:-1], return_exceptions=True)

    first, second, failing = asyncio.run(scenario())
    assert (first, second, repr(failing)) == ("first", "second", "ValueError('failing')")
    assert ended == ["first", "second", "failing", "abandoned"]
