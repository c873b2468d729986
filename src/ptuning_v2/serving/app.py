"""The HTTP API of ``ptv2 serve``: many tasks on one backbone, requests batched across tasks.

A dispatcher on the event loop collects the requests that arrive within ``max_wait_ms`` of the first
one (for any tasks, up to ``max_batch_size`` inputs) and hands them as one mixed-task batch to a single
model thread, so the event loop never waits on the model and the model never runs two batches at once.
Loading and removing tasks run on that same thread, between batches. The queue of waiting requests is
bounded (503 when full); on shutdown every accepted request is answered before the model thread ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ptuning_v2.cli.commands.predict import finite
from ptuning_v2.config import ConfigError
from ptuning_v2.data import DataError
from ptuning_v2.models import ModelLoadError
from ptuning_v2.serving.batching import InputTooLongError, predict_requests
from ptuning_v2.serving.batching import Request as PredictRequest
from ptuning_v2.serving.multi_prompt import MultiPromptModel, TaskEntry, UnknownTaskError
from ptuning_v2.training.checkpoint import CheckpointError

T = TypeVar("T")


@dataclass
class ServeConfig:
    """The server's limits; see ``ptv2 serve --help``."""

    max_batch_size: int = 32
    """Inputs per mixed-task batch (a request with more inputs still runs, alone)."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for others."""
    max_queue: int = 1024
    """Requests accepted and not yet answered; one more is answered 503."""
    max_inputs: int = 64
    max_input_chars: int = 10_000
    overlong: Literal["truncate", "refuse"] = "truncate"
    """An input longer than the model takes (``train.max_length`` tokens): cut it, as ``ptv2 predict``
    does, or answer 422."""
    batching: bool = True
    """False: every request runs alone (the baseline of the load test)."""
    max_tokens: int = 1024
    """The most new tokens an OpenAI-compatible request may ask for (``max_tokens``; 400 past it)."""


class Engine(Protocol):
    """What the routes need from whatever runs the model: ``Dispatcher`` in one process, a Ray Serve
    replica in ``ray_app.py``; one set of routes and checks serves both."""

    multi: MultiPromptModel
    closing: bool
    in_flight: int
    batches: int
    tasks_fixed: str | None
    """Why tasks cannot be added or removed here (409), or None when they can."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def predict(self, task: str, inputs: list[Any]) -> list[dict[str, Any]]: ...

    async def call(self, fn: Callable[..., T], *args: Any) -> T: ...


@dataclass
class Pending:
    request: PredictRequest
    future: asyncio.Future
    arrival: float


class Dispatcher:
    """The bounded queue, the batching loop and the one model thread."""

    def __init__(self, multi: MultiPromptModel, config: ServeConfig) -> None:
        self.multi = multi
        self.config = config
        self.queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self.in_flight = 0
        """Requests accepted and not answered yet (queued, waiting for their batch, or running)."""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptv2-model")
        self.task: asyncio.Task | None = None
        self.closing = False
        self.batches = 0
        self.tasks_fixed: str | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Answer every accepted request, then end the loop and the model thread."""
        self.closing = True
        await self.queue.put(None)
        if self.task is not None:
            await self.task
        self.executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the model thread (between batches)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def predict(self, task: str, inputs: list[Any]) -> list[dict[str, Any]]:
        """The predictions of one request (or its own error), once its batch has run; 503 when
        ``max_queue`` requests are already waiting."""
        if self.closing:
            raise HTTPException(503, "the server is shutting down")
        if self.in_flight >= self.config.max_queue:
            raise HTTPException(
                503, f"the server's queue is full ({self.config.max_queue} requests waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        pending = Pending(PredictRequest(task, inputs), loop.create_future(), loop.time())
        self.in_flight += 1
        try:
            self.queue.put_nowait(pending)
            return await pending.future
        finally:
            self.in_flight -= 1

    async def _loop(self) -> None:
        carry: Pending | None = None
        stopping = False
        while not stopping:
            first = carry or await self.queue.get()
            carry = None
            if first is None:
                break
            if first.future.done():  # its client went away while it waited
                continue
            group = [first]
            if self.config.batching:
                group, carry, stopping = await self._collect(first)
            await self._run(group)

    async def _collect(self, first: Pending) -> tuple[list[Pending], Pending | None, bool]:
        """``first`` and the requests that arrive within ``max_wait_ms`` of it, up to ``max_batch_size``
        inputs; returns the batch, a request that did not fit (it starts the next one), and whether the
        stop mark was reached."""
        loop = asyncio.get_running_loop()
        deadline = first.arrival + self.config.max_wait_ms / 1000
        group, size = [first], len(first.request.inputs)
        while size < self.config.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            if item is None:
                return group, None, True
            if item.future.done():
                continue
            if size + len(item.request.inputs) > self.config.max_batch_size:
                return group, item, False
            group.append(item)
            size += len(item.request.inputs)
        return group, None, False

    async def _run(self, group: list[Pending]) -> None:
        self.batches += 1
        requests = [p.request for p in group]
        try:
            results = await self.call(
                predict_requests,
                self.multi,
                requests,
                self.config.max_batch_size,
                self.config.overlong == "refuse",
            )
        except Exception as exc:  # the batch as a whole failed: every request of it gets the error
            results = [exc] * len(group)
        for pending, result in zip(group, results, strict=True):
            if pending.future.done():  # the client went away
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)


def describe(entry: TaskEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "task": entry.task.name,
        "labels": list(getattr(entry.task, "labels", None) or []) or None,
        "prompt_length": entry.prompt_length,
        "method": entry.meta.get("method"),
        "checkpoint": str(entry.checkpoint),
    }


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes, 422 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {declared} bytes; the limit is {limit}")
    body = await request.body()
    if len(body) > limit:
        raise HTTPException(413, f"request body of {len(body)} bytes; the limit is {limit}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(422, f"the body is not valid JSON: {exc}") from None


def check_input(item: Any, index: int, max_chars: int) -> int:
    """The characters of one input (a text, a list of texts, or an object of texts); 422 for other types."""
    if isinstance(item, str):
        return len(item)
    values = item if isinstance(item, list) else list(item.values()) if isinstance(item, dict) else None
    if values is None or (isinstance(item, dict) and not all(isinstance(k, str) for k in item)):
        raise HTTPException(422, f"inputs[{index}]: expected a text, a list of texts or an object")
    size = 0
    for value in values:
        texts = value if isinstance(value, list) else [value]
        if not all(isinstance(t, str) for t in texts):
            raise HTTPException(422, f"inputs[{index}]: every value must be a text or a list of texts")
        size += sum(len(t) for t in texts)
    return size


def create_app(
    multi: MultiPromptModel,
    config: ServeConfig | None = None,
    engine: Callable[[MultiPromptModel, ServeConfig], Engine] = Dispatcher,
) -> FastAPI:
    """The FastAPI app serving ``multi``'s tasks; ``engine`` (started with the app) runs the model."""
    config = config or ServeConfig()
    body_limit = config.max_inputs * (config.max_input_chars * 4 + 64) + 4096  # UTF-8 and JSON quoting
    state: dict[str, Engine] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["dispatcher"] = engine(multi, config)
        state["dispatcher"].start()
        yield
        await state["dispatcher"].stop()

    app = FastAPI(title="ptv2 serve", lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": {"status": exc.status_code, "message": exc.detail}}, exc.status_code)

    def entry(name: str) -> TaskEntry:
        try:
            return multi.entry(name)
        except UnknownTaskError as exc:
            raise HTTPException(404, str(exc)) from None

    async def task_for(request: Request, name: str) -> TaskEntry:
        """The one resolver of the task a request names: 404 when it is not loaded."""
        return entry(name)

    async def task_names(request: Request) -> list[str]:
        """The tasks a request may name."""
        return sorted(multi.tasks)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        dispatcher = state["dispatcher"]
        return {
            "status": "closing" if dispatcher.closing else "ok",
            "model": multi.model_name,
            "tasks": len(multi.tasks),
            "in_flight": dispatcher.in_flight,
            "batches": dispatcher.batches,
        }

    @app.get("/v1/tasks")
    async def list_tasks() -> dict[str, Any]:
        return {"tasks": [describe(e) for e in list(multi.tasks.values())]}

    @app.post("/v1/tasks/{task}/predict")
    async def predict(task: str, request: Request) -> JSONResponse:
        loaded = entry(task)
        body = await read_json(request, body_limit)
        if not isinstance(body, dict) or set(body) != {"inputs"} or not isinstance(body["inputs"], list):
            raise HTTPException(422, 'expected a JSON object {"inputs": [...]}')
        inputs = body["inputs"]
        if not inputs:
            raise HTTPException(422, "inputs: give at least one input")
        if len(inputs) > config.max_inputs:
            raise HTTPException(413, f"{len(inputs)} inputs; at most {config.max_inputs} per request")
        for i, item in enumerate(inputs):
            size = check_input(item, i, config.max_input_chars)
            if size > config.max_input_chars:
                raise HTTPException(413, f"inputs[{i}]: {size} characters; at most {config.max_input_chars}")
        parsed = [loaded.task.parse_input(x) if isinstance(x, str) else x for x in inputs]
        try:
            outputs = await state["dispatcher"].predict(task, parsed)
        except HTTPException:
            raise
        except UnknownTaskError as exc:
            raise HTTPException(404, str(exc)) from None
        except InputTooLongError as exc:
            raise HTTPException(422, str(exc)) from None
        except (DataError, ConfigError) as exc:
            raise HTTPException(422, str(exc)) from None
        except Exception as exc:  # a fault of the server, not of the request: said, not hidden
            raise HTTPException(500, f"{type(exc).__name__}: {exc}") from None
        return JSONResponse({"outputs": finite(outputs)})

    @app.post("/v1/tasks", status_code=201)
    async def add_task(request: Request) -> dict[str, Any]:
        if state["dispatcher"].tasks_fixed:
            raise HTTPException(409, state["dispatcher"].tasks_fixed)
        body = await read_json(request, 65_536)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("checkpoint"), str)
            or set(body)
            - {
                "name",
                "checkpoint",
            }
        ):
            raise HTTPException(422, 'expected a JSON object {"checkpoint": "FOLDER", "name": "NAME"?}')
        name = body.get("name") or task_name(Path(body["checkpoint"]))
        if not isinstance(name, str):
            raise HTTPException(422, "name: expected a string")
        if name in multi.tasks:
            raise HTTPException(409, f"a task named {name!r} is already loaded; remove it first")
        try:
            added = await state["dispatcher"].call(multi.add, name, body["checkpoint"])
        except (CheckpointError, ValueError, ModelLoadError, OSError) as exc:
            raise HTTPException(422, str(exc)) from None
        return describe(added)

    @app.delete("/v1/tasks/{task}")
    async def remove_task(task: str) -> dict[str, Any]:
        if state["dispatcher"].tasks_fixed:
            raise HTTPException(409, state["dispatcher"].tasks_fixed)
        entry(task)
        try:
            await state["dispatcher"].call(multi.remove, task)
        except UnknownTaskError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"removed": task}

    from ptuning_v2.serving.openai_api import openai_routes  # it builds on this module

    app.include_router(openai_routes(task_for, lambda: state["dispatcher"], config, task_names))
    return app


def task_name(directory: Path) -> str:
    """``runs/sentiment/checkpoint`` -> ``sentiment``; any other folder -> its own name."""
    return directory.parent.name if directory.name == "checkpoint" else directory.name
