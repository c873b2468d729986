"""``ptv2 serve --ray``: the HTTP API of ``ptv2 serve`` as a Ray Serve deployment of N replicas.

Every replica loads the backbone and the prompts itself and serves app.py's FastAPI app (the same
routes, checks and JSON errors, built per replica through ``@serve.ingress``); Ray Serve's proxy
spreads requests over the replicas, and within a replica Ray Serve's ``@serve.batch`` groups requests of
any tasks, up to ``max_batch_size`` inputs, into one mixed-task batch run by ``predict_requests`` on the
replica's one model thread, as the one-process dispatcher does. Every response names its replica in
the ``x-ptv2-replica`` header.

With more than one replica (or autoscaling) each replica holds its own copy of the tasks, so
``POST /v1/tasks`` and ``DELETE /v1/tasks/{task}`` are refused (409): a task added on one replica would
make answers depend on where a request lands. The task list changes by redeploying with new prompts
(Ray Serve replaces the replicas one by one). Checkpoint folders and the backbone must exist at the
same paths on every node that runs a replica. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import re
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from ray import serve
from ray.serve import Application

from ptuning_v2.config import ConfigError
from ptuning_v2.serving.app import ServeConfig, create_app
from ptuning_v2.serving.batching import Request as PredictRequest
from ptuning_v2.serving.batching import predict_requests
from ptuning_v2.serving.multi_prompt import MultiPromptModel
from ptuning_v2.serving.observability import REQUEST_ID_HEADER, configure_access_log
from ptuning_v2.serving.options import add_arguments, checkpoints, serve_config
from ptuning_v2.serving.store import PromptStore, open_backbone

T = TypeVar("T")
REPLICA_HEADER = "x-ptv2-replica"
APP_NAME = "ptv2"
Outcome = list[dict[str, Any]] | Exception


class ReplicaEngine:
    """app.py's ``Engine`` in one replica: Ray Serve's batcher in front of one model thread (batches,
    generations, task loads and removals never run at the same time)."""

    def __init__(self, multi: MultiPromptModel, config: ServeConfig) -> None:
        self.multi = multi
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptv2-model")
        self.closing = False
        self.in_flight = 0
        self.batches = 0
        self.observe_pass: Callable[[int], None] = lambda rows: None
        replicas = serve.get_replica_context().world_size  # None when autoscaling
        self.tasks_fixed: str | None = None
        if replicas != 1:
            self.tasks_fixed = (
                f"this Ray Serve deployment runs {replicas or 'an autoscaled number of'} replicas, each with "
                "its own copy of the tasks, so tasks cannot be added or removed at run time; redeploy (or "
                "restart ptv2 serve --ray) with the new --prompts"
            )
        self._batched.set_max_batch_size(config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.max_wait_ms / 1000)

    def start(self) -> None:
        """Nothing to start: Ray Serve's batch queue starts with the first request."""

    async def stop(self) -> None:
        self.closing = True
        self.executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def predict(self, task: str, inputs: list[Any]) -> list[dict[str, Any]]:
        """One request's predictions, from a batch shared with other requests; a request of more than
        ``max_batch_size`` inputs (or any, without batching) runs alone."""
        if self.closing:
            raise HTTPException(503, "the server is shutting down")
        request = PredictRequest(task, inputs)
        self.in_flight += 1
        try:
            if self.config.batching and len(inputs) <= self.config.max_batch_size:
                outcome = await self._batched(request)
            else:
                outcome = (await self._run([request]))[0]
        finally:
            self.in_flight -= 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @serve.batch(batch_size_fn=lambda requests: sum(len(r.inputs) for r in requests))
    async def _batched(self, requests: list[PredictRequest]) -> list[Outcome]:
        """Ray Serve calls this with the requests that arrived within ``batch_wait_timeout_s`` of the
        first, up to ``max_batch_size`` inputs in all (counted by ``batch_size_fn``)."""
        return await self._run(requests)

    async def _run(self, requests: list[PredictRequest]) -> list[Outcome]:
        """Each request's predictions or its own error; a failure of the whole batch goes to all."""
        self.batches += 1
        try:
            return await self.call(
                predict_requests,
                self.multi,
                requests,
                self.config.max_batch_size,
                self.config.overlong == "refuse",
                self.observe_pass,
            )
        except Exception as exc:
            return [exc] * len(requests)


@serve.deployment(name="ptv2", max_constructor_retry_count=1, graceful_shutdown_timeout_s=60)
@serve.ingress()
class PromptServer:
    """One replica: its own backbone and prompts behind app.py's API."""

    def __init__(
        self, tasks: dict[str, str], model: str | None, device: str | None, config: ServeConfig
    ) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # as ptv2 does: no weight-loading bars in the replica's log
        configure_access_log(config.access_log)  # in the replica's log (Ray forwards it to the driver)
        store = PromptStore(config.store) if config.store else None
        self.multi = open_backbone(tasks, store, model, device)
        self.config = config
        self.replica_tag = serve.get_replica_context().replica_tag

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Ray Serve after ``__init__``: the app of ``ptv2 serve``, run by this replica's engine."""
        app = create_app(self.multi, self.config, engine=ReplicaEngine)

        @app.middleware("http")
        async def name_replica(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = self.replica_tag
            # Ray Serve's proxy puts its request id (the client's, or one it makes) in the request, which
            # our middleware keeps, and adds it to the answer itself: one header, not two.
            del response.headers[REQUEST_ID_HEADER]
            return response

        return app


def application(args: argparse.Namespace, tasks: dict[str, str], config: ServeConfig) -> Application:
    """The deployment for ``ptv2 serve``'s arguments: ``--replicas`` replicas of ``--replica-cpus`` CPUs
    and ``--replica-gpus`` GPUs; a replica takes up to two batches' worth of requests at once (one
    running, one filling) and each proxy queues up to ``--max-queue`` more (503 past it)."""
    if args.replicas < 1:
        raise ConfigError("--replicas: expected a positive number")
    if args.replica_cpus < 0 or args.replica_gpus < 0:
        raise ConfigError("--replica-cpus, --replica-gpus: expected 0 or more")
    return PromptServer.options(
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": args.replica_cpus, "num_gpus": args.replica_gpus},
        max_ongoing_requests=2 * config.max_batch_size,
        max_queued_requests=config.max_queue,
    ).bind({name: str(Path(path).resolve()) for name, path in tasks.items()}, args.model, args.device, config)


def app_builder(values: dict[str, Any]) -> Application:
    """For ``serve run`` / ``serve deploy``: the application for ``ptv2 serve``'s options given as a dict
    (a config file's ``args``, or ``serve run``'s ``key=value``; ``prompts`` and ``names`` as lists or
    comma-separated), e.g. ``{"prompts": ["/runs/rt/checkpoint"], "replicas": 2, "max_batch_size": 16}``."""
    misplaced = sorted(set(values) & {"host", "port", "ray_address", "ray"})
    if misplaced:
        raise ConfigError(f"ray_app args: {misplaced} belong to the Serve config (http_options), not to args")
    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif key in ("prompts", "names"):
            argv += [flag, *(value if isinstance(value, list) else str(value).split(","))]
        else:
            argv += [flag, str(value)]
    parser = argparse.ArgumentParser(prog="ptuning_v2.serving.ray_app:app_builder", exit_on_error=False)
    add_arguments(parser)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(argv)
    except (SystemExit, argparse.ArgumentError) as exc:
        message = errors.getvalue().strip().splitlines()[-1:] or [str(exc)]
        raise ConfigError(f"ray_app args {values}: {message[0]}") from None
    return application(args, checkpoints(args), serve_config(args))


def serve_until_stopped(app: Application, address: str | None, host: str, port: int, summary: str) -> None:
    """Run ``app`` on a new local Ray instance (``address`` None) or an existing cluster, until SIGINT or
    SIGTERM; then delete the application (Ray Serve lets every replica answer its accepted requests)
    and stop the local instance. On a cluster, Serve and other applications keep running."""
    import ray

    serving, stop = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not serving.is_set():
            raise KeyboardInterrupt  # still starting: give up the start (cleaned up below)
        stop.set()

    def catch_signals() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)

    catch_signals()
    local = address is None
    ray.init(address=address or "local", include_dashboard=False if local else None, logging_level="WARNING")
    catch_signals()  # again: Ray's core installs a SIGTERM handler that dumps a stack and aborts
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING"})
        except RuntimeError:
            raise ConfigError(f"the Ray Serve deployment did not start: {deployment_error()}") from None
        serving.set()
        print(f"{summary} at http://{host}:{port}", flush=True)
        while not stop.wait(0.5):  # a signal caught by one of Ray's threads runs its handler only here
            pass
    finally:
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()


def deployment_error() -> str:
    """The failed deployment's own error: the last line of the traceback Ray Serve keeps for it (a
    replica's constructor failed: a checkpoint not found on that node, ...), without module path."""
    status = serve.status().applications.get(APP_NAME)
    messages = [d.message for d in status.deployments.values() if d.message] if status else []
    lines = [line for message in messages for line in message.splitlines() if line.strip()]
    if not lines:
        return status.message if status else "no status"
    return re.sub(r"^[\w.]+\.(\w+: )", r"\1", lines[-1])
