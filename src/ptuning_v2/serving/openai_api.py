"""OpenAI-compatible generation: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``.

``model`` names a causal-LM generation task. Its answer is the text ``ptv2 predict`` gives on the task's
checkpoint with the same decoding settings: the task builds the prompt (its ``source_template``; for
chat, the tokenizer's chat template as in training), and the settings a request leaves out are the
checkpoint's own (``task_options.generation``, ``max_new_tokens``, ``train.seed``). ``temperature`` 0 is
greedy; above 0 samples, seeded with ``seed`` as ``ptv2 predict`` seeds with ``train.seed``. ``stop`` cuts
the text before the first stop sequence (and ends the generation there); ``n`` is 1 only.

Each request is one ``generate()`` call on a model thread of its own, which it holds for its whole
generation; other requests run on the other model threads meanwhile (``--model-threads``), sampled
generations one at a time (``tasks.generation.seeded``). With ``--decode-batching`` a request is instead
a row of the one decode loop (``decode_batching.py``). ``stream: true`` answers with server-sent
events, a chunk per generated token that adds text, then ``data: [DONE]``; the chunks join to the text
of the same request without streaming. Errors have OpenAI's shape, ``{"error": {"message", "type",
"code"}}``, so OpenAI's clients raise their own error types (401, 404, 400, ...).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import StoppingCriteria, StoppingCriteriaList

from ptuning_v2.config import ConfigError
from ptuning_v2.data import DataError, DataReport
from ptuning_v2.serving.batching import InputTooLongError
from ptuning_v2.serving.decode_batching import DecodeBatcher
from ptuning_v2.serving.engine import Engine, ServeConfig, read_json
from ptuning_v2.serving.multi_prompt import MultiPromptModel, TaskEntry, UnknownTaskError
from ptuning_v2.serving.observability import openai_error_type, server_fault
from ptuning_v2.tasks.base import batches

TaskResolver = Callable[[Request, str], Awaitable[TaskEntry]]
"""The app's one resolver: the loaded task a request may use (401, 404 otherwise)."""
TaskLister = Callable[[Request], Awaitable[list[str]]]
"""The names of the tasks a request may use."""

SETTINGS = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n"}
COMPLETION_FIELDS = SETTINGS | {"prompt"}
CHAT_FIELDS = SETTINGS | {"messages", "max_completion_tokens"}
ROLES = ("system", "user", "assistant")
MAX_STOPS = 4


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape."""
    kind, code = openai_error_type(status)
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)


class OpenAIRoute(APIRoute):
    """A route whose HTTP errors, the resolver's 401 and 404 included, come in OpenAI's shape and statuses."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as exc:
                # OpenAI answers any malformed request 400 (its clients' BadRequestError), also the
                # shared body reader's 422 (not JSON)
                status = 400 if exc.status_code == 422 else exc.status_code
                return openai_error(status, str(exc.detail), exc.headers)

        return answer


@dataclass
class Settings:
    """A request's decoding settings, checked; None is the checkpoint's own."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    """``stream_options.include_usage``: one more chunk before ``[DONE]``, with the usage."""


def number(body: dict[str, Any], name: str, low: float, high: float, integer: bool = False) -> Any:
    """``body[name]`` checked to lie in [low, high] (None when absent or null); 400 otherwise."""
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise HTTPException(400, f"{name}: expected {kind} from {low} to {high}, got {value!r}")
    return value


def parse_settings(body: dict[str, Any], allowed: set[str], max_tokens: int) -> Settings:
    """The decoding settings of a request body; 400 for an unknown field or a value out of range."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise HTTPException(400, f"unsupported field(s) {unknown}; this server takes {sorted(allowed)}")
    if body.get("n") not in (None, 1):
        raise HTTPException(400, f"n: only 1 completion per request is supported, got {body['n']!r}")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise HTTPException(400, "give max_tokens or max_completion_tokens, not both")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if (
        not isinstance(stops, list)
        or not all(isinstance(s, str) and s for s in stops)
        or len(stops) > MAX_STOPS
    ):
        raise HTTPException(400, f"stop: expected a text or a list of up to {MAX_STOPS} non-empty texts")
    if not isinstance(body.get("stream", False), bool | None):
        raise HTTPException(400, f"stream: expected true or false, got {body['stream']!r}")
    options = body.get("stream_options")
    if options is not None and (
        not body.get("stream")
        or not isinstance(options, dict)
        or set(options) - {"include_usage"}
        or not isinstance(options.get("include_usage", False), bool)
    ):
        raise HTTPException(
            400, 'stream_options: expected {"include_usage": true or false}, with stream: true'
        )
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return Settings(
        max_tokens=number(body, limit, 1, max_tokens, integer=True),
        temperature=number(body, "temperature", 0, 2),
        top_p=number(body, "top_p", 0, 1),
        seed=number(body, "seed", 0, 2**32 - 1, integer=True),
        stop=stops,
        stream=bool(body.get("stream")),
        include_usage=bool((options or {}).get("include_usage")),
    )


def parse_messages(messages: Any, max_chars: int) -> list[dict[str, str]]:
    """Chat messages as ``{"role", "content"}`` turns (content: a text, or a list of text parts; an
    optional participant ``name`` is read and left out, as chat templates have no place for it); the last
    turn is the user's; 400 otherwise, 413 past ``max_chars`` characters in all."""
    if not isinstance(messages, list) or not messages:
        raise HTTPException(400, 'messages: expected a list of {"role", "content"} objects')
    turns = []
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or set(message) - {"role", "content", "name"}
            or "content" not in message
        ):
            raise HTTPException(400, f'messages[{i}]: expected an object {{"role", "content", "name"?}}')
        if not isinstance(message.get("name", ""), str):
            raise HTTPException(400, f"messages[{i}].name: expected a text")
        if message.get("role") not in ROLES:
            raise HTTPException(
                400, f"messages[{i}].role: expected one of {list(ROLES)}, got {message.get('role')!r}"
            )
        content = message["content"]
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise HTTPException(400, f"messages[{i}].content: expected a text or a list of text parts")
        turns.append({"role": message["role"], "content": content})
    if turns[-1]["role"] != "user":
        raise HTTPException(
            400, f"messages: the last message must be the user's, not the {turns[-1]['role']}'s"
        )
    size = sum(len(t["content"]) for t in turns)
    if size > max_chars:
        raise HTTPException(413, f"messages: {size} characters; at most {max_chars}")
    return turns


def decoding(entry: TaskEntry, settings: Settings) -> dict[str, Any]:
    """The task's own ``generate()`` options with the request's settings in place of its."""
    options = dict(entry.task.decoding())
    if settings.max_tokens is not None:
        options["max_new_tokens"] = settings.max_tokens
    if settings.temperature == 0:
        options["do_sample"] = False
        for name in ("temperature", "top_p", "top_k"):
            options.pop(name, None)
    elif settings.temperature is not None:
        options.update(do_sample=True, temperature=settings.temperature)
    if settings.top_p is not None and options.get("do_sample"):
        options["top_p"] = settings.top_p
    return options


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to its first stop sequence, and whether there was one."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def stop_prefix(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` may be the start of a stop sequence."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


@dataclass
class Result:
    text: str
    finish_reason: str
    """``stop`` (end of text or a stop sequence) or ``length`` (``max_tokens`` reached)."""
    prompt_tokens: int
    completion_tokens: int


class Generation(StoppingCriteria):
    """One request's generation. ``generate()`` calls it after every new token: it ends the generation at a
    stop sequence or when the client has gone, and, when streaming, hands ``emit`` the text that became
    final (``emit`` runs on the model thread)."""

    def __init__(
        self,
        entry: TaskEntry,
        source: str | list[dict[str, str]],
        settings: Settings,
        refuse_overlong: bool,
    ) -> None:
        self.entry = entry
        self.source = source
        """A completion's prompt (the task's input), or a conversation's turns."""
        self.settings = settings
        self.refuse_overlong = refuse_overlong
        self.emit: Callable[[str], None] | None = None
        """Set by ``streaming``."""
        self.prompt_width = 0
        self.sent = ""
        self.cancelled = False
        """Set from the event loop when the client went away: the generation ends at its next token."""
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        """What a stream sends, in order: ``("text", delta)``... then ``("end", the finished task)``."""

    @classmethod
    def streaming(
        cls, entry: TaskEntry, source: str | list[dict[str, str]], settings: Settings, config: ServeConfig
    ) -> Generation:
        """A generation whose text goes, as it settles, from the model thread to ``events``."""
        loop = asyncio.get_running_loop()
        generation = cls(entry, source, settings, config.overlong == "refuse")
        generation.emit = lambda text: loop.call_soon_threadsafe(generation.events.put_nowait, ("text", text))
        return generation

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stopped = False
        if self.settings.stop or self.emit is not None:
            new = input_ids[0, self.prompt_width :]
            text, stopped = cut_at_stop(self.decode(new), self.settings.stop)
            if self.emit is not None and not stopped:  # stopped: ``answer`` sends the rest
                self.send(self.settled(text, new))
        done = stopped or self.cancelled
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def settled(self, text: str, new: torch.Tensor) -> str:
        """The part of ``text`` that later tokens will not change: what the text before the last token
        agrees with (a tokenizer's clean-up of spaces, a character split over tokens, change the end),
        less a possible start of a stop sequence and trailing whitespace (the answer is stripped)."""
        before, _ = cut_at_stop(self.decode(new[:-1]), self.settings.stop)
        text = os.path.commonprefix([text, before]).rstrip("\ufffd")
        return text[: len(text) - stop_prefix(text, self.settings.stop)].rstrip()

    def decode(self, ids: Any) -> str:
        return self.entry.task.tokenizer.decode(ids, skip_special_tokens=True)

    def send(self, text: str) -> None:
        """Emit what ``text`` (stripped at its start, as the answer is) adds to the text sent so far."""
        text = text.lstrip()
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent) :])
            self.sent = text

    def answer(self, ids: list[int]) -> tuple[str, bool]:
        """The text of the generated ``ids`` (stripped, as ``ptv2 predict``'s; cut at a stop sequence), and
        whether a stop sequence ended it; a stream gets the rest of it."""
        text, stopped = cut_at_stop(self.decode(ids), self.settings.stop)
        text = text.strip()
        if self.emit is not None:
            self.send(text)
        return text, stopped

    def prepare(self, multi: MultiPromptModel) -> tuple[dict[str, Any], dict[str, Any]]:
        """The prompt as a batch of one, and the ``generate()`` options; on a model thread (a task removed
        while the request waited is an ``UnknownTaskError``). Tokenising holds ``multi.tokenizing``, as the
        batches' does."""
        if multi.entry(self.entry.name) is not self.entry:
            raise UnknownTaskError(f"task {self.entry.name!r} was removed while its request waited")
        task = self.entry.task
        with multi.tokenizing:
            task.report = DataReport()
            if isinstance(self.source, str):
                features = task.predict_features([task.parse_input(self.source)])
            else:
                features = task.chat_features(self.source)
            cut = task.report.to_dict()
        if self.refuse_overlong and cut:
            raise InputTooLongError(
                f"the prompt is longer than task {self.entry.name!r} takes (task_options.max_source_length="
                f"{task.options.max_source_length} tokens) and this server refuses, not truncates, overlong inputs"
            )
        batch = next(batches(task, features[0], 1, next(self.entry.model.parameters()).device))
        self.prompt_width = batch["prompt_input_ids"].shape[1]
        return batch, decoding(self.entry, self.settings)

    def sampling_seed(self) -> int:
        """The request's ``seed``, else the checkpoint's ``train.seed`` (as ``ptv2 predict`` seeds)."""
        return self.entry.task.config.train.seed if self.settings.seed is None else self.settings.seed

    def finish(self, ids: list[int], max_new_tokens: int) -> Result:
        """The answer from the new token ids."""
        text, stopped = self.answer(ids)
        ended = stopped or (bool(ids) and ids[-1] == self.entry.task.tokenizer.eos_token_id)
        finish = "length" if not ended and len(ids) >= max_new_tokens else "stop"
        return Result(text, finish, self.prompt_width, len(ids))

    def run(self, multi: MultiPromptModel) -> Result:
        """Tokenise, one ``generate()`` call, decode, on a model thread."""
        batch, options = self.prepare(multi)
        if options.get("num_beams", 1) == 1:  # beam search ranks whole beams: it is cut after it ends
            options["stopping_criteria"] = StoppingCriteriaList([self])
        (ids,) = self.entry.task.generate_ids(self.entry.model, batch, options, self.sampling_seed())
        return self.finish(ids, options["max_new_tokens"])


def http_error(request: Request, exc: BaseException) -> HTTPException:
    """The HTTP answer to an error met while generating."""
    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, UnknownTaskError):
        return HTTPException(404, str(exc))
    if isinstance(exc, DataError | ConfigError):
        return HTTPException(400, str(exc))
    return server_fault(request, exc)


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def openai_routes(
    task_for: TaskResolver, engine: Callable[[], Engine], config: ServeConfig, task_names: TaskLister
) -> APIRouter:
    """The OpenAI-compatible routes; ``task_for`` authenticates and finds the task a request names,
    ``engine()`` runs the model (each generation on a model thread of its own)."""
    router = APIRouter(route_class=OpenAIRoute)
    body_limit = config.max_input_chars * 4 + 65_536  # UTF-8 and JSON quoting, and the other fields

    @router.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        names = await task_names(request)
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "ptv2"} for name in names],
        }

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)

    async def complete(request: Request, chat: bool) -> Response:
        body = await read_json(request, body_limit)
        if not isinstance(body, dict):
            raise HTTPException(400, "expected a JSON object")
        if not isinstance(body.get("model"), str):
            raise HTTPException(400, "model: expected the name of a task")
        entry = await task_for(request, body["model"])
        task = entry.task
        if task.name != "causal_lm":
            raise HTTPException(
                400,
                f"task {entry.name!r} is a {task.name} task; these routes serve causal_lm generation tasks: "
                f"use POST /v1/tasks/{entry.name}/predict",
            )
        settings = parse_settings(body, CHAT_FIELDS if chat else COMPLETION_FIELDS, config.max_tokens)
        if settings.stream and task.decoding().get("num_beams", 1) > 1:
            raise HTTPException(400, f"task {entry.name!r} decodes with beam search, which cannot stream")
        if chat:
            if not task.options.chat_template:
                raise HTTPException(
                    400,
                    f"task {entry.name!r} was trained without a chat template (task_options.chat_template): "
                    "use POST /v1/completions",
                )
            source: str | list[dict[str, str]] = parse_messages(body.get("messages"), config.max_input_chars)
        else:
            source = body.get("prompt")
            if not isinstance(source, str):
                raise HTTPException(400, "prompt: expected one text (lists of prompts are not supported)")
            if len(source) > config.max_input_chars:
                raise HTTPException(
                    413, f"prompt: {len(source)} characters; at most {config.max_input_chars}"
                )
        runner = engine()
        if runner.closing:
            raise HTTPException(503, "the server is shutting down")
        if runner.in_flight >= config.max_queue:
            raise HTTPException(
                503, f"the server's queue is full ({config.max_queue} requests waiting); retry later"
            )
        reply = Reply(entry.name, chat)
        if not settings.stream:
            generation = Generation(entry, source, settings, config.overlong == "refuse")
            try:
                result = await asyncio.shield(start(runner, generation))
            except asyncio.CancelledError:  # the client went away
                generation.cancelled = True
                raise
            except Exception as exc:
                raise http_error(request, exc) from None
            return JSONResponse(reply.whole(result))
        return await stream(request, runner, reply, Generation.streaming(entry, source, settings, config))

    sampling_turn = asyncio.Lock()
    decode_loop: DecodeBatcher | None = None
    """Made on the first request: the engine exists once the app runs."""

    async def generate(runner: Engine, generation: Generation) -> Result:
        """With ``--decode-batching``, in the decode loop when it reproduces the request's settings. Else
        one ``generate()`` call; a sampled one takes a model thread only when its turn comes (they take
        turns on ``tasks.generation.SAMPLING``), so one waiting for its turn leaves the threads to others."""
        nonlocal decode_loop
        options = decoding(generation.entry, generation.settings)
        if config.decode_batching:
            decode_loop = decode_loop or DecodeBatcher(runner.multi, config.max_batch_size)
            if decode_loop.reproduces(options):
                return await decode_loop.submit(runner, generation)
        if not options.get("do_sample"):
            return await runner.call(generation.run, runner.multi)
        async with sampling_turn:
            return await runner.call(generation.run, runner.multi)

    def start(runner: Engine, generation: Generation) -> asyncio.Task[Result]:
        """``generation`` on a model thread, counted in the engine's ``in_flight`` until it ends (also
        when its client has gone)."""
        runner.in_flight += 1

        def ended(done: asyncio.Task[Result]) -> None:
            runner.in_flight -= 1
            if not done.cancelled():
                done.exception()  # retrieved, also when nobody waits for it any more

        running = asyncio.ensure_future(generate(runner, generation))
        running.add_done_callback(ended)
        return running

    async def stream(
        request: Request, runner: Engine, reply: Reply, generation: Generation
    ) -> StreamingResponse:
        """Server-sent events of the generation's text as it comes; an error before its first text is an
        HTTP error, one after it an ``error`` event."""
        events = generation.events
        running = start(runner, generation)
        running.add_done_callback(lambda done: events.put_nowait(("end", done)))
        try:
            first = await events.get()
        except asyncio.CancelledError:
            generation.cancelled = True
            raise
        if first[0] == "end" and first[1].exception() is not None:
            raise http_error(request, first[1].exception())

        async def chunks() -> AsyncIterator[str]:
            try:
                if reply.chat:
                    yield sse(reply.chunk(""))  # the assistant's role
                kind, value = first
                while kind == "text":
                    yield sse(reply.chunk(value))
                    kind, value = await events.get()
                if value.exception() is not None:
                    error = http_error(request, value.exception())
                    yield sse({"error": {"message": error.detail, "type": "server_error", "code": None}})
                else:
                    yield sse(reply.chunk("", value.result().finish_reason))
                    if generation.settings.include_usage:
                        yield sse(reply.usage_chunk(value.result()))
                    yield sse("[DONE]")
            finally:
                generation.cancelled = True  # ends the generation at its next token if the client went away

        headers = {"Cache-Control": "no-cache"}
        return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)

    return router


class Reply:
    """The response bodies of one request, in the shape of OpenAI's completions or chat completions."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.started = False

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, result: Result) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": result.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.head(kind), "choices": [choice], "usage": usage(result)}

    def usage_chunk(self, result: Result) -> dict[str, Any]:
        """The stream's last chunk with ``stream_options.include_usage``: no choices, the usage."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.head(kind), "choices": [], "usage": usage(result)}

    def chunk(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        """A streamed chunk adding ``text``; the first chunk of a chat names the assistant's role, the
        last one has the finish reason (and no text)."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if not self.chat:
            choice["text"] = text
            return {**self.head("text_completion"), "choices": [choice]}
        delta: dict[str, Any] = {} if finish_reason else {"content": text}
        if not self.started:
            delta["role"] = "assistant"
            self.started = True
        choice["delta"] = delta
        return {**self.head("chat.completion.chunk"), "choices": [choice]}


def usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
