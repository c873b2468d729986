"""The HTTP API of ``ptv2 serve``: many tasks on one backbone, requests batched across tasks.

A dispatcher on the event loop collects the requests that arrive within ``max_wait_ms`` of the first
one (for any tasks, up to ``max_batch_size`` inputs) and hands them as one mixed-task batch to a free
model thread, so the event loop never waits on the model. ``model_threads`` batches run at once (one
thread's Python between passes overlaps another's pass), and OpenAI-compatible generations take a
model thread each, beside them (sampled ones take turns: ``tasks.generation.seeded``), or with
``decode_batching`` share one decode loop (``decode_batching.py``). Tasks are loaded and removed on a
loader thread meanwhile (``store.TaskLoader``); with ``--store`` they are loaded on demand
into a bounded cache (``store.TaskCache``). The queue of waiting requests is bounded (503 when full); on
shutdown every accepted request is answered before the model threads end.

Every route that names a task goes through one resolver, ``task_for`` (inside ``create_app``): it
checks the caller's API key may see the task (404 otherwise, as for a task that does not exist),
loads it from the store when it is cold, and pins it until the request is answered. API keys
(``auth.py``), request ids, metrics and the access log (``observability.py``) are app-level middleware.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ptuning_v2.checkpoint import CheckpointError, TrainedCheckpoint
from ptuning_v2.config import ConfigError
from ptuning_v2.data import DataError
from ptuning_v2.models import ModelLoadError
from ptuning_v2.serving.auth import AuthMiddleware, caller_key
from ptuning_v2.serving.batching import InputTooLongError, predict_requests
from ptuning_v2.serving.batching import Request as PredictRequest
from ptuning_v2.serving.engine import Engine, ServeConfig, read_json
from ptuning_v2.serving.multi_prompt import MultiPromptModel, TaskEntry, UnknownTaskError, task_name
from ptuning_v2.serving.observability import Metrics, RequestMiddleware, context, server_fault
from ptuning_v2.serving.openai_api import openai_routes
from ptuning_v2.serving.store import PromptStore, TaskCache, TaskLoader, TaskLoadError
from ptuning_v2.utils.io import finite

T = TypeVar("T")


@dataclass
class Pending:
    request: PredictRequest
    future: asyncio.Future
    arrival: float


class Dispatcher:
    """The bounded queue, the batching loop and the model threads."""

    def __init__(self, multi: MultiPromptModel, config: ServeConfig) -> None:
        self.multi = multi
        self.config = config
        self.queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self.in_flight = 0
        """Requests accepted and not answered yet (queued, waiting for their batch, or running)."""
        self.threads = config.model_threads
        self.executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="ptv2-model")
        self.task: asyncio.Task | None = None
        self.closing = False
        self.batches = 0
        self.tasks_fixed: str | None = None
        self.observe_pass: Callable[[int], None] = lambda rows: None
        self._turns = asyncio.Condition()
        self._busy = 0
        """Model threads given a batch or a call."""
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Answer every accepted request, then end the loop and the model threads."""
        self.closing = True
        await self.queue.put(None)
        if self.task is not None:
            await self.task
        await asyncio.gather(*self._running, return_exceptions=True)  # each error went to its own caller
        self.executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a generation) on a model thread of its own, once one is free, beside the batches;
        ``stop`` waits for it, also while it waits for a thread, and a caller that goes away leaves it to
        end (its thread is busy until then)."""
        running = asyncio.ensure_future(self._call(fn, *args))
        self._running.add(running)
        running.add_done_callback(self._ended)
        return await asyncio.shield(running)

    def _ended(self, call: asyncio.Task) -> None:
        self._running.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: its caller, if still there, gets it through the shield

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._turns:
            await self._turns.wait_for(lambda: self._busy < self.threads)
            self._busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            async with self._turns:
                self._busy -= 1
                self._turns.notify_all()

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
        """Requests wait in the queue while every model thread is busy, so a thread that frees up takes
        all of them (up to ``max_batch_size``) as its next batch."""
        carry: Pending | None = None
        stopping = False
        while not stopping:
            first = carry or await self.queue.get()
            carry = None
            if first is None:
                break
            async with self._turns:
                await self._turns.wait_for(lambda: self._busy < self.threads)
                self._busy += 1
            group = [first]
            if self.config.batching:
                group, carry, stopping = await self._collect(first)
            for part in self._share(group):
                running = asyncio.get_running_loop().create_task(self._run(part))
                self._running.add(running)
                running.add_done_callback(self._running.discard)

    def _share(self, group: list[Pending]) -> list[list[Pending]]:
        """``group`` split over model threads that are idle (claimed here), each part at least a thread's
        share of the requests in flight: requests that arrive together then run side by side, and their
        answers go back while the other thread computes, not in one burst that leaves both threads idle."""
        share = max(1, math.ceil(self.in_flight / self.threads))
        parts = max(1, min(self.threads - self._busy + 1, len(group) // share))
        self._busy += parts - 1
        return [group[len(group) * k // parts : len(group) * (k + 1) // parts] for k in range(parts)]

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
            if item.future.done():  # its client went away while it waited
                continue
            if size + len(item.request.inputs) > self.config.max_batch_size:
                return group, item, False
            group.append(item)
            size += len(item.request.inputs)
        return group, None, False

    async def _run(self, group: list[Pending]) -> None:
        """One batch on a model thread; each request gets its answer or its own error."""
        group = [p for p in group if not p.future.done()]  # clients that went away while their batch formed
        try:
            if group:
                await self._answer(group)
        finally:
            async with self._turns:
                self._busy -= 1
                self._turns.notify_all()

    async def _answer(self, group: list[Pending]) -> None:
        self.batches += 1
        requests = [p.request for p in group]
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor,
                predict_requests,
                self.multi,
                requests,
                self.config.max_batch_size,
                self.config.overlong == "refuse",
                self.observe_pass,
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
        "loaded": True,
        "task": entry.task.name,
        "labels": list(getattr(entry.task, "labels", None) or []) or None,
        "prompt_length": entry.prompt_length,
        "method": entry.meta.get("method"),
        "checkpoint": str(entry.checkpoint),
    }


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


def input_error(exc: DataError | ConfigError) -> str:
    """A request's unreadable input, named as the request names it: ``inputs[i]``."""
    if isinstance(exc, DataError) and exc.file is None and exc.record is not None and exc.record.isdigit():
        field = f"{exc.field}: " if exc.field else ""
        return f"inputs[{exc.record}]: {field}{exc.problem}"
    return str(exc)


def create_app(
    multi: MultiPromptModel,
    config: ServeConfig | None = None,
    engine: Callable[[MultiPromptModel, ServeConfig], Engine] = Dispatcher,
) -> FastAPI:
    """The FastAPI app serving ``multi``'s tasks (and the store's, with ``config.store``); ``engine``
    (started with the app) runs the model."""
    config = config or ServeConfig()
    body_limit = config.max_inputs * (config.max_input_chars * 4 + 64) + 4096  # UTF-8 and JSON quoting
    store = PromptStore(config.store) if config.store else None
    metrics = Metrics()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = state["dispatcher"] = engine(multi, config)
        dispatcher.observe_pass = metrics.batch_rows.observe
        dispatcher.start()
        loader = state["loader"] = TaskLoader(multi)
        if store is not None:
            cache_bytes = int(config.cache_mb * 2**20)
            state["cache"] = TaskCache(store, loader, config.max_loaded_tasks, cache_bytes, metrics)
        metrics.queue_depth.set_function(lambda: dispatcher.in_flight)
        metrics.loaded_tasks.set_function(lambda: len(multi.tasks))
        yield
        await dispatcher.stop()
        if store is not None:
            await state["cache"].close()
        loader.close()

    # no /docs, /redoc or /openapi.json: the routes read raw bodies, so their schema would say nothing
    # (docs/serving.md is the API's description), and every path the server answers is one it documents
    app = FastAPI(title="ptv2 serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AuthMiddleware, keys=config.api_keys)
    app.add_middleware(RequestMiddleware, metrics=metrics, log_inputs=config.log_inputs)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": {"status": exc.status_code, "message": exc.detail}}
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    def visible(request: Request, name: str) -> bool:
        key = caller_key(request.scope)
        return key is None or key.may_use(name)

    def require_admin(request: Request) -> None:
        key = caller_key(request.scope)
        if key is not None and not key.admin:
            raise HTTPException(403, f"key {key.name!r} is a client key; this route needs an admin key")

    async def task_for(request: Request, name: str) -> TaskEntry:
        """The loaded task ``name`` for this request: 404 when the caller's key may not see it (the same
        answer as for a task that does not exist); a cold store task is loaded first (the request waits,
        one load for all its requests) and stays pinned, never evicted, until the answer is complete."""
        unknown = f"unknown task {name!r}"
        if not visible(request, name):
            raise HTTPException(404, unknown)
        ctx = context(request)
        cache: TaskCache | None = state.get("cache")
        if cache is None or (not cache.holds(name) and name in multi.tasks):
            try:
                entry = multi.entry(name)
            except UnknownTaskError:
                raise HTTPException(404, unknown) from None
            ctx.task = name
            return entry
        try:
            slot, ctx.cache = await cache.acquire(name)
        except UnknownTaskError as exc:
            raise HTTPException(404, str(exc)) from None
        except TaskLoadError as exc:
            raise HTTPException(503, str(exc), {"Retry-After": str(math.ceil(exc.retry_after))}) from None
        ctx.cleanups.append(lambda: cache.release(slot))
        ctx.task = name
        return slot.entry

    async def task_names(request: Request) -> list[str]:
        """The tasks a request may name: the loaded ones and the store's, as its key allows."""
        names = set(multi.tasks) | (set(await asyncio.to_thread(store.names)) if store is not None else set())
        return sorted(n for n in names if visible(request, n))

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

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        require_admin(request)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/tasks")
    async def list_tasks(request: Request) -> dict[str, Any]:
        tasks = [describe(e) for e in list(multi.tasks.values()) if visible(request, e.name)]
        if store is not None:
            loaded = {t["name"] for t in tasks}
            names = await asyncio.to_thread(store.names)
            tasks += [{"name": n, "loaded": False} for n in names if n not in loaded and visible(request, n)]
        return {"tasks": tasks}

    @app.post("/v1/tasks/{task:path}/predict")
    async def predict(task: str, request: Request) -> JSONResponse:
        body = await read_json(request, body_limit)
        if not isinstance(body, dict) or set(body) != {"inputs"} or not isinstance(body["inputs"], list):
            raise HTTPException(422, 'expected a JSON object {"inputs": [...]}')
        inputs = context(request).inputs = body["inputs"]
        if not inputs:
            raise HTTPException(422, "inputs: give at least one input")
        if len(inputs) > config.max_inputs:
            raise HTTPException(413, f"{len(inputs)} inputs; at most {config.max_inputs} per request")
        for i, item in enumerate(inputs):
            size = check_input(item, i, config.max_input_chars)
            if size > config.max_input_chars:
                raise HTTPException(413, f"inputs[{i}]: {size} characters; at most {config.max_input_chars}")
        loaded = await task_for(request, task)
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
            raise HTTPException(422, input_error(exc)) from None
        except Exception as exc:  # a fault of the server, not of the request
            raise server_fault(request, exc) from None
        return JSONResponse({"outputs": finite(outputs)})

    @app.post("/v1/tasks", status_code=201)
    async def add_task(request: Request) -> dict[str, Any]:
        """Load a checkpoint as a task that stays loaded (never evicted). With a store, ``checkpoint``
        names a task of the store; without, a folder, and any folder that is missing, unreadable or not a
        checkpoint gets the same answer (the route does not tell what exists on the server's disk)."""
        require_admin(request)
        if state["dispatcher"].tasks_fixed:
            raise HTTPException(409, state["dispatcher"].tasks_fixed)
        body = await read_json(request, 65_536)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("checkpoint"), str)
            or set(body) - {"name", "checkpoint"}
        ):
            raise HTTPException(422, 'expected a JSON object {"checkpoint": "FOLDER", "name": "NAME"?}')
        checkpoint = body["checkpoint"]
        name = body.get("name") or (checkpoint if store is not None else task_name(Path(checkpoint)))
        if not isinstance(name, str):
            raise HTTPException(422, "name: expected a string")
        cache: TaskCache | None = state.get("cache")
        if name in multi.tasks or (cache is not None and cache.holds(name)):
            raise HTTPException(409, f"a task named {name!r} is already loaded; remove it first")
        if store is not None:
            try:
                source: Path | TrainedCheckpoint = store.folder(checkpoint)
            except UnknownTaskError:
                raise HTTPException(
                    422,
                    f"checkpoint {checkpoint!r}: not a task of the store (with --store, name one of its tasks)",
                ) from None
        else:
            try:
                source = await asyncio.to_thread(TrainedCheckpoint.read, Path(checkpoint))
            except (CheckpointError, OSError):
                raise HTTPException(
                    422, f"checkpoint {checkpoint!r}: not a readable checkpoint folder"
                ) from None
        try:
            added = await state["loader"].add(name, source)
        except (CheckpointError, ValueError, ModelLoadError, OSError) as exc:
            raise HTTPException(422, str(exc)) from None
        return describe(added)

    @app.delete("/v1/tasks/{task:path}")
    async def remove_task(task: str, request: Request) -> dict[str, Any]:
        """Unload a task; a store task reloads on its next request (the store is never written)."""
        require_admin(request)
        if state["dispatcher"].tasks_fixed:
            raise HTTPException(409, state["dispatcher"].tasks_fixed)
        cache: TaskCache | None = state.get("cache")
        try:
            if not visible(request, task):
                raise UnknownTaskError(task)
            if cache is not None and cache.holds(task):
                await cache.unload(task)
            else:
                multi.entry(task)
                await state["loader"].remove(task)
        except UnknownTaskError:
            raise HTTPException(404, f"unknown task {task!r}") from None
        return {"removed": task}

    app.include_router(openai_routes(task_for, lambda: state["dispatcher"], config, task_names))
    return app
