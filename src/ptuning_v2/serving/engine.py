"""What the HTTP routes (``app.py``, ``openai_api.py``) build on: the server's settings, the engine that runs
the model, and reading a request's JSON body."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import torch
from fastapi import HTTPException, Request

from ptuning_v2.serving.auth import KeyRing
from ptuning_v2.serving.multi_prompt import MultiPromptModel

T = TypeVar("T")


@dataclass
class ServeConfig:
    """The server's limits; see ``ptv2 serve --help``."""

    max_batch_size: int = 32
    """Inputs per mixed-task batch (a request with more inputs still runs, alone)."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for others."""
    model_threads: int = 2
    """Batches (and generations) that run at once. On a CPU, ``ptv2 serve`` splits torch's threads between
    them (``split_cpu_threads``): one batch's Python work between passes then overlaps another's pass
    instead of leaving cores idle, and a long generation does not hold up every request behind it."""
    max_queue: int = 1024
    """Requests accepted and not yet answered; one more is answered 503."""
    max_inputs: int = 64
    max_input_chars: int = 10_000
    overlong: Literal["truncate", "refuse"] = "truncate"
    """An input longer than the model takes (``train.max_length`` tokens): cut it, as ``ptv2 predict``
    does, or answer 422."""
    batching: bool = True
    """False: every request runs alone (the baseline of the load test)."""
    store: str | None = None
    """A folder of checkpoint folders, loaded on demand (``store.py``)."""
    max_loaded_tasks: int = 100
    cache_mb: float = 512.0
    """Bounds of the store's cache: tasks in memory, and MiB of their prompts and heads."""
    api_keys: KeyRing | None = None
    """None: no authentication (``ptv2 serve`` then binds loopback only, unless ``--insecure``)."""
    access_log: bool = True
    """One JSON line per request on stdout (``observability.configure_access_log``)."""
    log_inputs: bool = False
    """Write the inputs themselves into the access log (off: only their count)."""
    decode_batching: bool = False
    """OpenAI-compatible generations in one decode loop, new requests joining at its next step
    (``decode_batching.py``), instead of one ``generate()`` call each."""
    max_tokens: int = 1024
    """The most new tokens an OpenAI-compatible request may ask for (``max_tokens``; 400 past it)."""


def split_cpu_threads(multi: MultiPromptModel, config: ServeConfig) -> int:
    """On a CPU, an equal share of torch's threads for each batch that runs at once (``model_threads``);
    process-wide, so ``ptv2 serve`` calls it and ``create_app`` does not. Returns torch's threads now."""
    if multi.device.type == "cpu" and config.model_threads > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // config.model_threads))
    return torch.get_num_threads()


class Engine(Protocol):
    """What the routes need from whatever runs the model: ``Dispatcher`` in one process, a Ray Serve
    replica in ``ray_app.py``; one set of routes and checks serves both."""

    multi: MultiPromptModel
    closing: bool
    in_flight: int
    batches: int
    tasks_fixed: str | None
    """Why tasks cannot be added or removed here (409), or None when they can."""
    observe_pass: Callable[[int], None]
    """Called with the rows of every backbone pass (the metrics' histogram)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def predict(self, task: str, inputs: list[Any]) -> list[dict[str, Any]]: ...

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a model thread (the OpenAI routes' generations)."""
        ...


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes, 422 when it is not JSON or holds a text that is
    not Unicode (JSON lets ``"\\ud800"`` through, a lone surrogate no tokenizer takes)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {declared} bytes; the limit is {limit}")
    body = await request.body()
    if len(body) > limit:
        raise HTTPException(413, f"request body of {len(body)} bytes; the limit is {limit}")
    try:
        value = json.loads(body)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(422, f"the body is not valid JSON: {exc}") from None
    except UnicodeEncodeError as exc:
        surrogate = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise HTTPException(
            422, f"the body holds a lone surrogate ({surrogate}), which is not Unicode text"
        ) from None
    except RecursionError:
        raise HTTPException(422, "the body is not valid JSON: nested too deeply") from None
    return value
