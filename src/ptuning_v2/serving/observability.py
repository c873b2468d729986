"""What the server is doing: Prometheus metrics (``GET /metrics``), a request id on every request, and one
JSON access-log line per request.

``RequestMiddleware`` is app-level ASGI middleware, so it wraps every route (the OpenAI-compatible ones
too, and streamed answers until their last byte): it gives each request a context (its id, the task and
inputs the route fills in, the caller's key name, what to release at the end), keeps an incoming
``X-Request-ID`` (or makes one) and returns it in a header, answers an unhandled error as a JSON 500
naming the request id, and counts and logs the request when its answer is complete.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[\w.:@/+=-]{1,128}")
CONTEXT_KEY = "ptv2.context"
access_log = logging.getLogger("ptv2.access")
error_log = logging.getLogger("ptv2.serve")


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "ptv2_requests",
            "HTTP requests by route, task and status",
            ["route", "task", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "ptv2_request_seconds",
            "Time from request to the end of its answer",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.batch_rows = Histogram(
            "ptv2_batch_rows",
            "Rows per backbone pass (or per generate call)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "ptv2_queue_depth", "Requests accepted and not yet answered", registry=registry
        )
        self.loaded_tasks = Gauge("ptv2_loaded_tasks", "Tasks in memory", registry=registry)
        self.cache_hits = Counter(
            "ptv2_task_cache_hits", "Requests whose store task was loaded", registry=registry
        )
        self.cache_misses = Counter(
            "ptv2_task_cache_misses", "Requests whose store task had to be loaded first", registry=registry
        )
        self.cache_evictions = Counter(
            "ptv2_task_cache_evictions",
            "Store tasks unloaded to stay within the cache's bounds",
            registry=registry,
        )
        self.load_seconds = Histogram(
            "ptv2_task_load_seconds",
            "Time to load a store task",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.load_failures = Counter(
            "ptv2_task_load_failures", "Store task loads that failed", registry=registry
        )


def configure_access_log(enabled: bool) -> None:
    """The access log's lines on stdout, one JSON object each (or none); called once per process."""
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.WARNING)
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)


@dataclass
class RequestContext:
    """One request's facts for its log line and metrics, filled in by the middleware and the routes."""

    request_id: str
    task: str | None = None
    """Set once the task is resolved (and the caller may see it): unknown names stay out of metrics."""
    inputs: list[Any] | None = None
    cache: str | None = None
    """``hit``, ``miss`` or ``wait`` for a store task."""
    key: str | None = None
    """The name of the caller's API key (never the key)."""
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    """Run once the answer is complete (the release of a pinned task)."""


def context(connection: HTTPConnection | Scope) -> RequestContext:
    """The request's context (set by ``RequestMiddleware``)."""
    scope = connection.scope if isinstance(connection, HTTPConnection) else connection
    return scope[CONTEXT_KEY]


def server_fault(request: HTTPConnection, exc: BaseException) -> HTTPException:
    """The answer to a fault of the server that a route met: its traceback goes to the log, the caller
    gets the request id to quote (as for an error no route caught)."""
    request_id = context(request).request_id
    error_log.error("request %s: error while answering", request_id, exc_info=exc)
    return HTTPException(500, f"internal server error (request id {request_id})")


OPENAI_ERROR_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", None),
}
"""OpenAI's error type and code by status; any other 4xx is an ``invalid_request_error``, 5xx a ``server_error``."""


def openai_error_type(status: int) -> tuple[str, str | None]:
    return OPENAI_ERROR_TYPES.get(status, ("invalid_request_error" if status < 500 else "server_error", None))


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> list[Message]:
    """The ASGI messages of a ``{"error": {"status", "message", "type", "code"}}`` answer: the app's routes'
    shape, with OpenAI's type and code, so OpenAI's clients read a refused key or a 500 as their own errors."""
    kind, code = openai_error_type(status)
    body = json.dumps({"error": {"status": status, "message": message, "type": kind, "code": code}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return [
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": body},
    ]


class RequestMiddleware:
    """Request id, JSON 500s, metrics and the access log for every HTTP request of the app."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_inputs: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.log_inputs = log_inputs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        ctx = scope[CONTEXT_KEY] = RequestContext(request_id)
        status = 500
        started_answer = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_answer
            if message["type"] == "http.response.start":
                status, started_answer = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception("request %s: unhandled error", request_id)
            if not started_answer:
                for message in json_error(500, f"internal server error (request id {request_id})"):
                    await send_with_id(message)
        finally:
            for cleanup in ctx.cleanups:
                cleanup()
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, ctx.task or "", str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps(self.log_line(scope, ctx, status, seconds)))

    def log_line(self, scope: Scope, ctx: RequestContext, status: int, seconds: float) -> dict[str, Any]:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "request_id": ctx.request_id,
            "method": scope["method"],
            "path": scope["path"],
            "key": ctx.key,
            "task": ctx.task,
            "status": status,
            "inputs": None if ctx.inputs is None else len(ctx.inputs),
            "cache": ctx.cache,
            "ms": round(seconds * 1000, 2),
        }
        if self.log_inputs and ctx.inputs is not None:
            line["input_values"] = ctx.inputs
        return line
