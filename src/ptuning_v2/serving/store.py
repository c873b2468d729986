"""A prompt store: a folder of checkpoint folders, loaded on demand into a bounded cache of tasks.

A task's name is its folder's path below the store (``acme/sentiment``: nested folders are
namespaces). Names resolve strictly inside the store: a name that is not a plain relative path, or a
folder or file whose real path (symlinks followed) leads out of the store, is an unknown task. The
server only reads the store.

``TaskCache`` keeps at most ``max_tasks`` store tasks loaded, and at most ``max_bytes`` of their prompt
and head parameters, evicting the least recently used. A request pins its task until it is answered,
and a pinned task is never evicted (the cache may run over its bounds while every candidate is pinned,
and comes back under them as pins are released). Many requests for one cold task share one load.

``TaskLoader`` runs every add and remove of the server on a loader thread, so batches of other tasks
keep running on the model thread meanwhile: ``MultiPromptModel.add`` builds the task model around the
shared backbone without changing what a running batch reads (the backbone's attention is already the
prefix wrapper, and a further install only counts itself: the probe forward runs at the first install),
and the task becomes visible with one dict assignment under the model's lock. Adds and removes run one
at a time (the backbone counts its installs). A load builds no initial prompt (no random draw, and no text
run through the shared tokenizer for a ``prompt.init: text`` checkpoint): the checkpoint's tensors are
copied in right away.

A load remembers the size, mtime and inode of the checkpoint's two files before and after: if they
changed meanwhile (a checkpoint being replaced), the load is undone and tried again, so a task is never
built from half of one version and half of another; a replaced checkpoint is read on its next load. A
checkpoint that fails to load fails its own requests (503, with ``Retry-After``) and is retried only
after a back-off (1 s, doubling up to 60 s) or as soon as its files change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ptuning_v2.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, TrainedCheckpoint, read_meta
from ptuning_v2.config import ConfigError
from ptuning_v2.models import load_backbone, load_tokenizer
from ptuning_v2.serving.multi_prompt import MultiPromptModel, TaskEntry, UnknownTaskError, check_task_name
from ptuning_v2.serving.observability import Metrics
from ptuning_v2.tasks.base import get_task

T = TypeVar("T")
MAX_DEPTH = 8
"""Folders below the store searched for checkpoints (and the most '/'-separated parts of a name)."""
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 60.0
LOAD_ATTEMPTS = 3
Signature = tuple[tuple[int, int, int] | None, ...]
log = logging.getLogger("ptv2.serve")


class TaskLoadError(Exception):
    """A store task whose checkpoint cannot be loaded now; ``retry_after`` seconds until the next try."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def files_signature(folder: Path) -> Signature:
    """Inode, size and mtime of a checkpoint's two files (None for a missing one): equal signatures mean
    the files were not replaced or rewritten in between."""
    signature = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            stat = os.stat(folder / name)
        except OSError:
            signature.append(None)
        else:
            signature.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


class PromptStore:
    """Task names -> checkpoint folders, strictly inside ``root``."""

    def __init__(self, root: str | Path) -> None:
        if not Path(root).is_dir():
            raise ConfigError(f"--store {root}: not a folder")
        self.root = Path(os.path.realpath(root))

    def inside(self, path: str | Path) -> bool:
        """Whether ``path``, symlinks followed, is in the store."""
        return Path(os.path.realpath(path)).is_relative_to(self.root)

    def folder(self, name: str) -> Path:
        """The real path of task ``name``'s checkpoint folder; ``UnknownTaskError`` for a name that is not a
        checkpoint inside the store (``..``, an absolute path, a symlink leading out, no checkpoint)."""
        try:
            check_task_name(name)
        except ValueError:
            raise UnknownTaskError(f"unknown task {name!r}") from None  # as any name not in the store
        parts = name.split("/")
        path = self.root.joinpath(*parts)
        files = [path / CONFIG_FILE, path / WEIGHTS_FILE]
        if (
            len(parts) > MAX_DEPTH
            or not (path / CONFIG_FILE).is_file()
            or not all(map(self.inside, [path, *files]))
        ):
            raise UnknownTaskError(f"unknown task {name!r}")
        return Path(os.path.realpath(path))

    def names(self) -> list[str]:
        """Every task of the store, sorted: the folders (hidden ones excepted) that ``folder`` accepts."""
        found: list[str] = []

        def visit(folder: Path, prefix: str, depth: int) -> None:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir() or not self.inside(entry.path):
                    continue
                if (Path(entry.path) / CONFIG_FILE).is_file():
                    found.append(prefix + entry.name)
                elif depth < MAX_DEPTH:
                    visit(Path(entry.path), prefix + entry.name + "/", depth + 1)

        visit(self.root, "", 1)
        return [name for name in found if self._exists(name)]

    def _exists(self, name: str) -> bool:
        try:
            self.folder(name)
        except UnknownTaskError:
            return False
        return True


def open_backbone(
    checkpoints: dict[str, str], store: PromptStore | None, model: str | None, device: str | None
) -> MultiPromptModel:
    """The backbone with the fixed tasks (``--prompts``) loaded; with only a store, the backbone (or
    ``model``) of the store's first readable checkpoint, so that its tasks' kind (encoder, causal LM, ...)
    is known before any is loaded."""
    if checkpoints or store is None:
        return MultiPromptModel.from_checkpoints(checkpoints, device=device, model=model)
    for name in store.names():
        try:
            meta = read_meta(store.folder(name))
        except (CheckpointError, UnknownTaskError):
            continue
        kind = get_task(meta["task"]).backbone_kind
        model = model or meta["run_config"]["model"]
        options = meta["run_config"].get("model_options") or None
        multi = MultiPromptModel(
            model, load_backbone(model, kind, options=options), load_tokenizer(model), device
        )
        multi.kind = kind
        return multi
    raise ConfigError(f"--store {store.root}: no readable checkpoint in it, so no backbone to serve")


def task_bytes(entry: TaskEntry, backbone: set[int]) -> int:
    """The bytes of a task's own tensors: its prompt and head, not the shared backbone (ids in ``backbone``)."""
    tensors = itertools.chain(entry.model.parameters(), entry.model.buffers())
    return sum(t.nbytes for t in tensors if id(t) not in backbone)


@dataclass(eq=False)
class Loaded:
    """One store task in memory."""

    entry: TaskEntry
    bytes: int
    pins: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while nothing is pinned: an unload waits for it."""

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass
class Failure:
    signature: Signature
    message: str
    retry_at: float
    delay: float


def read_whole(folder: Path) -> TrainedCheckpoint:
    """The checkpoint in ``folder`` from files that did not change while they were read: a checkpoint
    replaced in the store is read entirely new or entirely old, never half of each."""
    for _ in range(LOAD_ATTEMPTS):
        before = files_signature(folder)
        checkpoint = TrainedCheckpoint.read(folder)
        if files_signature(folder) == before:
            return checkpoint
    raise CheckpointError(f"its files changed during each of {LOAD_ATTEMPTS} reads (written in place?)")


class TaskLoader:
    """Adds and removes tasks one at a time (the backbone counts its installs), off the model thread."""

    def __init__(self, multi: MultiPromptModel) -> None:
        self.multi = multi
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptv2-loader")
        self._one_at_a_time = asyncio.Lock()

    async def add(self, name: str, source: Path | TrainedCheckpoint) -> TaskEntry:
        """``multi.add`` of a checkpoint folder (read here, whole) or of a checkpoint already read."""
        loop = asyncio.get_running_loop()
        async with self._one_at_a_time:
            checkpoint = (
                source
                if isinstance(source, TrainedCheckpoint)
                else await loop.run_in_executor(self.thread, read_whole, source)
            )
            return await loop.run_in_executor(self.thread, self.multi.add, name, checkpoint)

    async def remove(self, name: str) -> None:
        async with self._one_at_a_time:
            await asyncio.get_running_loop().run_in_executor(self.thread, self.multi.remove, name)

    def close(self) -> None:
        self.thread.shutdown(wait=True)


class TaskCache:
    """Store tasks loaded on demand, bounded by count and by bytes, least recently used evicted.

    Its bookkeeping lives on the event loop (no locks); ``acquire`` and ``release`` are called there."""

    def __init__(
        self,
        store: PromptStore,
        loader: TaskLoader,
        max_tasks: int,
        max_bytes: int,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.loader = loader
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self.busy: dict[str, asyncio.Task] = {}  # a name being loaded or unloaded
        self.failures: dict[str, Failure] = {}
        backbone = loader.multi.backbone
        self._backbone = {id(t) for t in itertools.chain(backbone.parameters(), backbone.buffers())}

    @property
    def bytes(self) -> int:
        return sum(slot.bytes for slot in self.loaded.values())

    def holds(self, name: str) -> bool:
        """Whether ``name`` is (or is becoming, or is ceasing to be) a store task in memory."""
        return name in self.loaded or name in self.busy

    async def acquire(self, name: str) -> tuple[Loaded, str]:
        """Task ``name`` loaded and pinned, and how: ``hit`` (it was loaded), ``miss`` (this request
        loaded it) or ``wait`` (it waited for another request's load)."""
        outcome = "hit"
        while True:
            slot = self.loaded.get(name)
            if slot is not None:
                slot.pins += 1
                slot.idle.clear()
                self.loaded.move_to_end(name)
                if outcome == "hit":
                    self.metrics.cache_hits.inc()
                return slot, outcome
            busy = self.busy.get(name)
            if busy is None:
                folder = self.store.folder(name)
                self._check_backoff(name, folder)
                outcome = "miss"
                self.metrics.cache_misses.inc()
                busy = self.busy[name] = asyncio.get_running_loop().create_task(self._load(name, folder))
            elif outcome == "hit":
                outcome = "wait"
                self.metrics.cache_misses.inc()
            await asyncio.shield(busy)  # a client that goes away does not cancel the load

    def release(self, slot: Loaded) -> None:
        """The request that pinned ``slot`` is answered; evict if the cache is over its bounds."""
        slot.pins -= 1
        if slot.pins == 0:
            slot.idle.set()
            self._evict()

    async def unload(self, name: str) -> None:
        """Take a store task out of memory (once its running requests are answered); it reloads on its
        next request."""
        while name in self.busy:
            with contextlib.suppress(TaskLoadError):  # a failed load is its own requests' answer
                await asyncio.shield(self.busy[name])
        if name not in self.loaded:
            raise UnknownTaskError(f"task {name!r} is not loaded")
        self._unload(name)
        await asyncio.shield(self.busy[name])

    def _check_backoff(self, name: str, folder: Path) -> None:
        failure = self.failures.get(name)
        if failure is None or files_signature(folder) != failure.signature:
            return  # never failed, or its files changed since: try now
        left = failure.retry_at - time.monotonic()
        if left > 0:
            raise TaskLoadError(failure.message, left)

    async def _load(self, name: str, folder: Path) -> None:
        started = time.perf_counter()
        try:
            entry = await self.loader.add(name, folder)
        except Exception as exc:
            self.metrics.load_failures.inc()
            failure = self.failures.get(name)
            delay = min(failure.delay * 2, MAX_BACKOFF_S) if failure else FIRST_BACKOFF_S
            message = f"task {name!r} cannot be loaded: {exc}"
            self.failures[name] = Failure(files_signature(folder), message, time.monotonic() + delay, delay)
            log.warning("%s (next try in %.0f s, or when its files change)", message, delay)
            raise TaskLoadError(message, delay) from None
        finally:
            del self.busy[name]
        self.metrics.load_seconds.observe(time.perf_counter() - started)
        self.failures.pop(name, None)
        self.loaded[name] = Loaded(entry, task_bytes(entry, self._backbone))
        self._evict(keep=name)

    def _evict(self, keep: str | None = None) -> None:
        """Unload least recently used, unpinned tasks (not ``keep``, just loaded for waiting requests)
        until the cache is within its bounds."""
        while len(self.loaded) > self.max_tasks or self.bytes > self.max_bytes:
            victim = next((n for n, s in self.loaded.items() if s.pins == 0 and n != keep), None)
            if victim is None:
                return
            self.metrics.cache_evictions.inc()
            self._unload(victim)

    def _unload(self, name: str) -> None:
        slot = self.loaded.pop(name)

        async def unload() -> None:
            try:
                await slot.idle.wait()
                await self.loader.remove(name)
            finally:
                del self.busy[name]

        self.busy[name] = asyncio.get_running_loop().create_task(unload())

    async def close(self) -> None:
        """Wait for the loads and unloads under way."""
        while self.busy:
            await asyncio.gather(*self.busy.values(), return_exceptions=True)
