"""Iteration-level batching of OpenAI-compatible generations (``ptv2 serve --decode-batching``).

Without it, each generation is one ``generate()`` call that holds a model thread to its end. With it, the
generations run in one decode loop on one model thread, as vLLM and LoRAX run theirs: each step is one
backbone pass over every running row, each row with its own task's prompt (a mixed-task delivery) and
its own rows of the KV cache. A request that arrives while the loop runs joins at the next step: the
prompts of the requests that arrived since the last step are prefilled in one pass (one alone, when it
came alone), then their cache joins the batch's, left-padded to the longest. A row that ends leaves at
once, and the loop ends when no row is left.

Each row's next token is chosen as ``generate()`` chooses it for that request alone: transformers' own
logits processors for the row's settings, then the argmax, or a draw from the row's own generator
seeded with the request's seed (the draws ``generate()`` makes from torch's global generator seeded the
same). Sampled rows therefore need no turns. Settings the loop does not reproduce (beam search,
repetition penalties, n-gram blocking) run as one ``generate()`` call, as without the flag.

One batched pass does not give bit-for-bit the numbers of one pass per row, so a rare near-tie can
decode differently from ``ptv2 predict``; the tests check equality on the tiny and the real model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ptuning_v2.injection.attention import PROMPTS_KWARG
from ptuning_v2.prompts.model import decoder_positions
from ptuning_v2.serving.engine import Engine
from ptuning_v2.serving.multi_prompt import MultiPromptModel, TaskEntry, UnknownTaskError

LOOP_OPTIONS = frozenset(
    {"max_new_tokens", "pad_token_id", "eos_token_id", "do_sample", "temperature", "top_k", "top_p"}
    | {"min_new_tokens", "num_beams", "length_penalty", "early_stopping"}
)
"""Decoding options the loop reproduces (the last two do nothing without beams)."""
MODEL_DEFAULTS = ("do_sample", "temperature", "top_k", "top_p", "min_new_tokens")
"""Settings a request may leave to the backbone's ``generation_config``, as ``generate()`` does."""
NOT_REPRODUCED = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "min_length": (None, 0),
    "bad_words_ids": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "sequence_bias": (None,),
    "guidance_scale": (None, 1.0), "min_p": (None,), "typical_p": (None, 1.0), "top_h": (None,),
    "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "renormalize_logits": (None, False),
    "watermarking_config": (None,), "encoder_repetition_penalty": (None, 1.0),
    "exponential_decay_length_penalty": (None,),
}  # fmt: skip
"""``generation_config`` fields whose processors the loop does not reproduce, with their neutral values."""


class LoopRequest(Protocol):
    """What the loop needs of a request (``openai_api.Generation``)."""

    entry: TaskEntry

    def prepare(self, multi: MultiPromptModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The prompt batch (``prompt_input_ids``, ``prompt_attention_mask``) and ``generate()`` options."""

    def sampling_seed(self) -> int: ...

    def __call__(self, input_ids: torch.Tensor, scores: Any) -> torch.Tensor:
        """After each token: sends the text that settled; True to end (a stop sequence, a client gone)."""

    def finish(self, ids: list[int], max_new_tokens: int) -> Any:
        """The answer, from the new token ids."""


def effective(options: dict[str, Any], model_config: GenerationConfig) -> dict[str, Any]:
    """``options`` with the settings they leave out taken, as ``generate()`` takes them, from the backbone's
    ``generation_config``, else transformers' own defaults (``top_k`` 50 when sampling)."""
    defaults = GenerationConfig._get_default_generation_params()
    chosen = {name: getattr(model_config, name, None) for name in MODEL_DEFAULTS}
    chosen = {name: defaults.get(name) if value is None else value for name, value in chosen.items()}
    return {**{k: v for k, v in chosen.items() if v is not None}, **options}


def loop_reproduces(options: dict[str, Any], model_config: GenerationConfig) -> bool:
    """Whether the loop chooses tokens as ``generate()`` does for these options on this backbone."""
    unusual = [
        name for name, neutral in NOT_REPRODUCED.items() if getattr(model_config, name, None) not in neutral
    ]
    return set(options) <= LOOP_OPTIONS and options.get("num_beams", 1) == 1 and not unusual


def processors(options: dict[str, Any], prompt_length: int, device: torch.device) -> LogitsProcessorList:
    """transformers' processors for ``options`` (effective ones), in ``generate()``'s order."""
    chain = LogitsProcessorList()
    if options.get("min_new_tokens"):
        chain.append(
            MinNewTokensLengthLogitsProcessor(
                prompt_length, options["min_new_tokens"], options["eos_token_id"], device=str(device)
            )
        )
    if options.get("do_sample"):
        if options.get("temperature") is not None and options["temperature"] != 1.0:
            chain.append(TemperatureLogitsWarper(options["temperature"]))
        if options.get("top_k"):
            chain.append(TopKLogitsWarper(options["top_k"]))
        if options.get("top_p") is not None and options["top_p"] < 1.0:
            chain.append(TopPLogitsWarper(options["top_p"]))
    return chain


@dataclass
class Row:
    """One request in the loop."""

    request: LoopRequest
    future: concurrent.futures.Future
    task: str = ""
    tokens: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    """``[1, prompt + new]``: what the processors and the request's per-token check see."""
    new: list[int] = field(default_factory=list)
    position: int = 0
    """The position id of the row's last token."""
    chain: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    generator: torch.Generator | None = None
    max_new_tokens: int = 0
    eos: frozenset[int] = frozenset()


class DecodeBatcher:
    """The decode loop: requests join it through ``submit``; it runs on a model thread while it has rows."""

    def __init__(self, multi: MultiPromptModel, max_rows: int) -> None:
        self.multi = multi
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._waiting: list[Row] = []
        self._active = False
        self.rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        """``[rows, cached tokens]``: 0 over each row's left padding."""
        self._cache_keyword = (
            "cache" if "cache" in inspect.signature(multi.backbone.forward).parameters else "past_key_values"
        )  # transformers 5.24 renamed past_key_values (the old name warns until 5.40)

    def reproduces(self, options: dict[str, Any]) -> bool:
        return loop_reproduces(options, self.multi.backbone.generation_config)

    async def submit(self, runner: Engine, request: LoopRequest) -> Any:
        """``request``'s answer, decoded in the loop (started on a model thread when it is not running)."""
        row = Row(request, concurrent.futures.Future())
        with self._lock:
            self._waiting.append(row)
            start = not self._active
            self._active = True
        if start:
            asyncio.ensure_future(runner.call(self.run, runner.observe_pass)).add_done_callback(self._ended)
        return await asyncio.wrap_future(row.future)

    def _ended(self, loop: asyncio.Future) -> None:
        """A loop that could not run (the server is stopping) fails the rows that wait for it."""
        if loop.cancelled() or loop.exception() is not None:
            error = RuntimeError("the decode loop did not run") if loop.cancelled() else loop.exception()
            with self._lock:
                waiting, self._waiting, self._active = self._waiting, [], False
            for row in waiting:
                row.future.set_exception(error)

    def run(self, observe_pass: Callable[[int], None]) -> None:
        """The loop: admit waiting rows, step, until no row is left. A request's own failure (its input,
        its prefill) fails it alone; a failed step fails every row. ``observe_pass`` hears the rows of every
        backbone pass that ran: prefills and steps."""
        while True:
            with self._lock:
                room = self.max_rows - len(self.rows)
                joining, self._waiting = self._waiting[:room], self._waiting[room:]
                if not joining and not self.rows:
                    self._active = False
                    return
            with torch.no_grad():
                self._admit(joining, observe_pass)
                if not self.rows:
                    continue
                observe_pass(len(self.rows))
                try:
                    self._step()
                except Exception as exc:
                    for row in self.rows:
                        if not row.future.done():
                            row.future.set_exception(exc)
                    self.rows, self._cache, self._mask = [], None, None

    def _admit(self, joining: list[Row], observe_pass: Callable[[int], None]) -> None:
        """Prefill the joining rows in one pass and choose their first tokens; the cache rows of those that
        go on join the batch's. A request's own failure fails it alone: its input before the pass, and a
        failed shared pass is tried again one row at a time."""
        rows = []
        for row in joining:
            try:
                self._prepare(row)
                rows.append(row)
            except Exception as exc:
                row.future.set_exception(exc)
        if not rows:
            return
        try:
            prefilled = [(rows, self._prefill(rows))]
        except Exception as exc:
            if len(rows) == 1:
                rows[0].future.set_exception(exc)
                return
            prefilled = []
            for row in rows:  # one request can fail a shared pass: alone, it fails only itself
                try:
                    prefilled.append(([row], self._prefill([row])))
                except Exception as own:
                    row.future.set_exception(own)
        for group, (cache, mask, logits) in prefilled:
            observe_pass(len(group))
            try:
                keep = [i for i, row in enumerate(group) if not self._choose(row, logits[i : i + 1])]
                if keep:
                    if len(keep) < len(group):
                        cache.batch_select_indices(torch.tensor(keep, device=mask.device))
                        mask = mask[keep]
                    self._join(cache, mask)
                    self.rows.extend(group[i] for i in keep)
            except Exception as exc:
                for row in group:
                    if not row.future.done():
                        row.future.set_exception(exc)
        if self.rows:
            self._trim()

    def _prepare(self, row: Row) -> None:
        """The row's prompt ids, task and decoding settings."""
        batch, options = row.request.prepare(self.multi)
        options = effective(options, self.multi.backbone.generation_config)
        row.task = row.request.entry.name
        row.tokens = batch["prompt_input_ids"][:, batch["prompt_attention_mask"][0].bool()]
        row.chain = processors(options, row.tokens.shape[1], row.tokens.device)
        if options.get("do_sample"):
            row.generator = torch.Generator(row.tokens.device).manual_seed(row.request.sampling_seed())
        row.max_new_tokens = options["max_new_tokens"]
        eos = options.get("eos_token_id")
        row.eos = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def _prefill(self, rows: list[Row]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """One pass over the rows' prompts, left-padded to the longest: their cache, their ``[rows, tokens]``
        mask and the logits of each one's last token; each row's position is set."""
        width = max(row.tokens.shape[1] for row in rows)
        ids = torch.cat([left_pad(row.tokens, width, dim=1) for row in rows])
        mask = torch.cat([left_pad(torch.ones_like(row.tokens), width, dim=1) for row in rows])
        offsets = torch.tensor([row.request.entry.position_offset for row in rows], device=ids.device)
        inputs = decoder_positions({"input_ids": ids, "attention_mask": mask}, offsets)
        cache = DynamicCache(config=self.multi.backbone.config)
        out = self.multi.backbone(
            **inputs, **{self._cache_keyword: cache}, use_cache=True, logits_to_keep=1,
            **{PROMPTS_KWARG: self.multi.delivery([row.task for row in rows])},
        )  # fmt: skip
        for row, position in zip(rows, inputs["position_ids"][:, -1].tolist(), strict=True):
            row.position = position
        return cache, mask, out.logits[:, -1]

    def _join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """New rows' cache and mask below the batch's, the narrower left-padded with masked zeros."""
        if self._cache is None or not self.rows:
            self._cache, self._mask = cache, mask
            return
        width = max(mask.shape[1], self._mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, width), left_pad(theirs.keys, width)])
            mine.values = torch.cat([left_pad(mine.values, width), left_pad(theirs.values, width)])
        self._mask = torch.cat([left_pad(self._mask, width, dim=1), left_pad(mask, width, dim=1)])

    def _step(self) -> None:
        """One backbone pass over every row's last token; rows that end leave the batch."""
        try:
            delivery = self.multi.delivery([row.task for row in self.rows])
        except UnknownTaskError:  # a task removed while its rows ran: they end, the others go on
            gone = [i for i, row in enumerate(self.rows) if self._removed(row)]
            if not gone:
                raise
            self._keep([i for i in range(len(self.rows)) if i not in gone])
            return
        last = torch.tensor([[row.new[-1]] for row in self.rows], device=self._mask.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        positions = torch.tensor([[row.position + 1] for row in self.rows], device=last.device)
        out = self.multi.backbone(
            input_ids=last, attention_mask=self._mask, position_ids=positions, **{self._cache_keyword: self._cache},
            use_cache=True, **{PROMPTS_KWARG: delivery},
        )  # fmt: skip
        keep = []
        for i, row in enumerate(self.rows):
            row.position += 1
            if not self._choose(row, out.logits[i : i + 1, -1]):
                keep.append(i)
        self._keep(keep)

    def _removed(self, row: Row) -> bool:
        """Whether the row's task is no longer the one it started with (its request then fails)."""
        if self.multi.tasks.get(row.task) is row.request.entry:
            return False
        row.future.set_exception(UnknownTaskError(f"task {row.task!r} was removed while its request ran"))
        return True

    def _keep(self, keep: list[int]) -> None:
        """Only the rows at ``keep`` go on (with their cache rows)."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._trim()

    def _trim(self) -> None:
        """Drop the columns of left padding that no remaining row needs any more."""
        start = int((self._mask != 0).any(dim=0).long().argmax())
        if start:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self._mask = self._mask[:, start:]

    def _choose(self, row: Row, logits: torch.Tensor) -> bool:
        """Append the row's next token (as ``generate()`` chooses it); True when the row has ended, its
        answer set."""
        scores = row.chain(row.tokens, logits.float())
        if row.generator is None:
            token = int(scores.argmax(dim=-1))
        else:
            token = int(torch.multinomial(F.softmax(scores, dim=-1), 1, generator=row.generator))
        row.new.append(token)
        row.tokens = torch.cat([row.tokens, row.tokens.new_tensor([[token]])], dim=1)
        stopped = bool(row.request(row.tokens, scores).all())
        if not (stopped or token in row.eos or len(row.new) >= row.max_new_tokens):
            return False
        try:
            row.future.set_result(row.request.finish(row.new, row.max_new_tokens))
        except Exception as exc:
            row.future.set_exception(exc)
        return True


def left_pad(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """``tensor`` with zeros in front along ``dim`` up to ``width``."""
    missing = width - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
