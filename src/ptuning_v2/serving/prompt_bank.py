"""Every loaded task's prompts as rows of a few shared tensors, so a mixed-task batch gathers them in one op.

A table per slot and prompt length holds one row per task (``[capacity, length, width]``, each row a
prompt's keys then values). A batch whose rows come from 32 tasks gathers each slot's keys, then its
values, with one ``index_select`` of the table, where stacking the tasks' prompts one tensor at a time made
a copy per task (on a CPU, mostly per-tensor overhead; docs/multi_prompt.md). Each task's own prompt tensors
(its parameters, when the prompt has no reparameterisation) are pointed at its rows, so a loaded prompt is
held once.

Batches read the bank from several threads while a loader adds and removes tasks. What a batch gets is a
copy, taken without holding off loads: a row a removed task frees is reused only once no copy that began
before the removal is still running, so no batch ever reads another task's prompt.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

TableKey = tuple[str, int, torch.dtype]
"""A table holds the prompts of one slot, length and dtype."""
Place = tuple[TableKey, int]
"""Where a task's prompt on one slot lives: its table, and the row."""


class RowBuffers(threading.local):
    """Each thread's memory for the per-row prompts of mixed-task batches, kept from batch to batch: on a
    CPU, fresh memory for every batch (about 18 MB at 32 tasks on MiniLM) cost more than gathering into it."""

    def __init__(self) -> None:
        self.storage: dict[tuple[str, int], torch.Tensor] = {}

    def take(self, key: tuple[str, int], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised ``shape`` tensor of ``like``'s dtype and device, in the memory kept for ``key``."""
        size = math.prod(shape)
        buffer = self.storage.get(key)
        if (
            buffer is None
            or buffer.numel() < size
            or (buffer.dtype, buffer.device) != (like.dtype, like.device)
        ):
            with torch.inference_mode(False):  # writable by later batches, under no_grad or inference_mode
                buffer = self.storage[key] = torch.empty(size, dtype=like.dtype, device=like.device)
        return buffer[:size].view(shape)


class PromptBank:
    """The prompts of every loaded task, by slot, as rows of shared tables."""

    def __init__(self) -> None:
        self.tables: dict[TableKey, torch.Tensor] = {}
        self.members: dict[TableKey, dict[int, torch.Tensor]] = {}
        """Per table, row -> the task's tensor that views it (re-pointed when the table grows)."""
        self.places: dict[str, dict[str, Place]] = {}
        self._buffers = RowBuffers()
        # The bookkeeping above; held for microseconds, never while a batch copies its prompts out.
        self._guard = threading.Lock()
        self._readers = 0
        self._free: dict[TableKey, list[int]] = {}
        """Per table, a heap of its free rows (the lowest is taken first)."""
        self._retired: set[Place] = set()
        """Rows freed while copies were running: free once none is."""

    @torch.no_grad()
    def put(self, name: str, prompts: Mapping[str, torch.Tensor]) -> None:
        """Copy a task's ``[length, width]`` prompt per slot into free rows; each given tensor then views its
        row (give the parameters themselves, and the task's prompt is held once)."""
        places = {}
        with self._guard:
            for slot, prompt in prompts.items():
                key = (slot, prompt.shape[0], prompt.dtype)
                row = self._free_row(key, prompt)
                table = self.tables[key]
                table[row].copy_(prompt)
                prompt.data = table[row]
                self.members[key][row] = prompt
                places[slot] = (key, row)
            self.places[name] = places

    def _free_row(self, key: TableKey, like: torch.Tensor) -> int:
        """The lowest free row of ``key``'s table, doubling the table (and re-pointing its members) when full."""
        free = self._free.setdefault(key, [])
        if free:
            return heapq.heappop(free)
        used = self.members.setdefault(key, {})
        table = self.tables.get(key)
        capacity = 0 if table is None else table.shape[0]
        with torch.inference_mode(False):  # the members are parameters, usable outside inference mode
            grown = torch.empty(max(4, 2 * capacity), *like.shape, dtype=like.dtype, device=like.device)
        if table is not None:
            grown[:capacity].copy_(table)
        for row, tensor in used.items():
            tensor.data = grown[row]
        self.tables[key] = grown
        free.extend(range(capacity + 1, grown.shape[0]))  # ascending: already a heap
        return capacity

    @torch.no_grad()
    def drop(self, name: str) -> None:
        """Free a task's rows; its tensors get their own copies back (a kept task model keeps its prompt)."""
        with self._guard:
            for key, row in self.places.pop(name).values():
                tensor = self.members[key].pop(row)
                tensor.data = tensor.data.clone()
                if self._readers:
                    self._retired.add((key, row))
                else:
                    heapq.heappush(self._free[key], row)

    @contextmanager
    def _reading(
        self, names: Sequence[str]
    ) -> Iterator[tuple[dict[str, dict[str, Place]], dict[TableKey, torch.Tensor]]]:
        """The places of ``names`` (KeyError for one not in the bank) and the tables as they are now, with
        every row they name kept from reuse until the block ends."""
        with self._guard:
            places = {name: self.places[name] for name in names}
            tables = dict(self.tables)
            self._readers += 1
        try:
            yield places, tables
        finally:
            with self._guard:
                self._readers -= 1
                if not self._readers:
                    for key, row in self._retired:
                        heapq.heappush(self._free[key], row)
                    self._retired.clear()

    def prompts(self, name: str) -> dict[str, torch.Tensor]:
        """A copy of one task's ``[length, width]`` prompt per slot, for a batch of that task alone."""
        with self._reading([name]) as (places, tables):
            return {slot: tables[key][row].clone() for slot, (key, row) in places[name].items()}

    def gather(
        self, tasks: Sequence[str]
    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
        """Per-row keys and values for a batch whose row ``i`` belongs to ``tasks[i]``, gathered into this
        thread's reused buffers (a result holds until this thread gathers again), padded with zeros to the
        longest task's prompt; and, per slot where some row's prompt is shorter or absent, the ``[batch,
        length]`` mask of the positions each row uses."""
        with self._reading(list(dict.fromkeys(tasks))) as (places, tables):
            return self._gather(tasks, places, tables)

    def _gather(
        self, tasks: Sequence[str], places: dict[str, dict[str, Place]], tables: dict[TableKey, torch.Tensor]
    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
        per_row, masks, indexes = {}, {}, {}
        for slot in dict.fromkeys(s for p in places.values() for s in p):
            at = [places[name].get(slot) for name in tasks]
            lengths = [0 if place is None else place[0][1] for place in at]
            longest = max(lengths)
            used = {place[0] for place in at if place is not None}
            like = tables[next(iter(used))]
            width = like.shape[-1] // 2
            gathered = []
            for part in (0, 1):  # keys, then values
                halves = slice(part * width, (part + 1) * width)
                rows = self._buffers.take((slot, part), (len(tasks), longest, width), like)
                if len(used) == 1 and min(lengths) == longest:  # every row's prompt in one table
                    order = tuple(place[1] for place in at)  # often the same on every slot
                    if order not in indexes:
                        indexes[order] = torch.tensor(order, device=like.device)
                    torch.index_select(like[..., halves], 0, indexes[order], out=rows)
                else:  # zeros, then each row's prompt into it (tried: grouped index ops, slower at 8 rows)
                    sources = {key: tables[key][..., halves] for key in used}
                    rows.zero_()
                    for i, place in enumerate(at):
                        if place is not None:
                            rows[i, : lengths[i]].copy_(sources[place[0]][place[1]])
                gathered.append(rows)
            per_row[slot] = tuple(gathered)
            if min(lengths) < longest:
                spots = torch.arange(longest, device=like.device)
                masks[slot] = spots < torch.tensor(lengths, device=like.device)[:, None]
        return per_row, masks
