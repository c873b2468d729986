"""One frozen backbone, many trained prompts: each task is a prompt of kilobytes and a small head.

``MultiPromptModel`` loads checkpoint folders onto one backbone (each checked against the backbone's
fingerprint), adds and removes them at run time, and runs **mixed-task batches**: one backbone pass
in which every row gets its own task's prefixes, followed by every row's own head (the linear heads
of all the batch's tasks as one product).

Prompts of different lengths share a batch by padding each layer's prefix to the longest one and
masking the unused positions per row (a task with no prompt at some layer has every position there
masked), so a row's result does not depend on its neighbours.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptuning_v2.checkpoint import CheckpointError, TrainedCheckpoint, as_checkpoint
from ptuning_v2.injection.attention import PROMPTS_KWARG, Delivery, PrefixInjector
from ptuning_v2.methods import backbone_sharing_methods
from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
from ptuning_v2.prompts.model import DeepPromptModel, decoder_positions
from ptuning_v2.tasks.base import Task, encoder_inputs, get_task, heads_by_row
from ptuning_v2.trained.model import attach_trained


class UnknownTaskError(KeyError):
    """A request names a task that is not loaded."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class TaskEntry:
    """One loaded task: its task object (tokenisation, labels, decoding) and task model (prompt + head)."""

    name: str
    task: Task
    model: nn.Module
    checkpoint: Path
    meta: dict[str, Any]
    _key_values: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict, repr=False)

    @property
    def encoder(self) -> DeepPromptModel | None:
        encoder = getattr(self.model, "encoder", None)
        return encoder if isinstance(encoder, DeepPromptModel) else None

    @cached_property
    def prompts(self) -> dict[str, torch.Tensor]:
        """``[length, width]`` per prompted slot (none for a linear probe), as they are when first asked
        for (``MultiPromptModel.add`` asks): a loaded task is served, not trained, and a batch of 32 tasks
        must not ask each one again. Detached: a prompt without reparameterisation is the parameter itself."""
        if self.encoder is None:
            return {}
        with torch.no_grad():
            return {slot: prompt.detach() for slot, prompt in self.encoder.prompt().items()}

    def key_value(self, slot: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The keys and the values of the prompt on ``slot`` (views: a prompt row is its keys, then its
        values); None where the task has no prompt."""
        if slot not in self._key_values:
            prompt = self.prompts.get(slot)
            halves = None if prompt is None else prompt.split(prompt.shape[-1] // 2, dim=-1)
            self._key_values[slot] = halves
        return self._key_values[slot]

    @property
    def prompt_length(self) -> int:
        """The longest per-layer prompt (0 for a linear probe)."""
        return max((n for n, _ in self.encoder.prompt.shapes.values()), default=0) if self.encoder else 0

    @property
    def position_offset(self) -> int:
        return self.encoder.position_offset if self.encoder is not None else 0


def check_task_name(name: str) -> None:
    """Task names are letters, digits, '-', '_' and '.', in namespaces separated by '/' (``acme/sentiment``,
    as a prompt store's folders); no part is empty or starts with '.', so a name is never ``..``."""
    parts = name.split("/")
    plain = [p.replace("-", "").replace("_", "").replace(".", "") for p in parts]
    if not all(p and not p.startswith(".") and q.isalnum() for p, q in zip(parts, plain, strict=True)):
        raise ValueError(
            f"task name {name!r}: use letters, digits, '-', '_' or '.' (not first), namespaces separated by '/'"
        )


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


def _task_name(directory: Path) -> str:
    """``runs/sentiment/checkpoint`` -> ``sentiment``; any other folder -> its own name."""
    return directory.parent.name if directory.name == "checkpoint" else directory.name


class MultiPromptModel:
    """A frozen backbone serving any number of prompted tasks, alone or in mixed-task batches."""

    def __init__(
        self, model: str, backbone: nn.Module, tokenizer: Any, device: str | torch.device | None = None
    ) -> None:
        self.model_name = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backbone = backbone.to(self.device).eval()
        self.tokenizer = tokenizer
        self.fingerprint = backbone_fingerprint(backbone)
        self.kind: str | None = None
        self.injector = PrefixInjector(backbone, ["self", "decoder_self", "cross"])
        self.slots = {slot.name: slot for slot in self.injector.slots}
        self.tasks: dict[str, TaskEntry] = {}
        self._lock = threading.Lock()  # adding and removing vs. reading the task table
        self.tokenizing = threading.Lock()
        """Held while texts become features and outputs become answers (``predict_requests``): the tasks
        share one tokenizer, a fast tokenizer sets its truncation for each call, and a task counts its cuts
        in ``task.report``. Padding and the passes run outside it."""
        self._buffers = RowBuffers()

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Mapping[str, str | Path | TrainedCheckpoint] | Sequence[str | Path],
        device: str | torch.device | None = None,
        model: str | None = None,
    ) -> MultiPromptModel:
        """Load the backbone the checkpoints were trained on (or ``model``) once, then every checkpoint.

        A list names each task after its folder (``runs/x/checkpoint`` -> ``x``)."""
        if not isinstance(checkpoints, Mapping):
            checkpoints = {_task_name(Path(c)): c for c in checkpoints}
        if not checkpoints and model is None:
            raise ValueError("give at least one checkpoint folder, or the model to serve")
        read = {name: as_checkpoint(checkpoint) for name, checkpoint in checkpoints.items()}
        first = next(iter(read.values()), None)  # it tells which backbone to load
        model = model or first.run_config["model"]
        kind = get_task(first.meta["task"]).backbone_kind if first else "encoder"
        options = (first.run_config.get("model_options") or None) if first else None
        backbone = load_backbone(model, kind, options=options)
        multi = cls(model, backbone, load_tokenizer(model), device)
        multi.kind = kind
        for name, checkpoint in read.items():
            multi.add(name, checkpoint)
        return multi

    def add(self, name: str, checkpoint: str | Path | TrainedCheckpoint) -> TaskEntry:
        """Load a checkpoint (a folder, or one already read) under ``name``; the backbone is not reloaded."""
        check_task_name(name)
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already loaded; remove it first")
        checkpoint = as_checkpoint(checkpoint)
        directory, meta = checkpoint.directory, checkpoint.meta
        if meta["method"] not in backbone_sharing_methods():
            raise CheckpointError(
                f"{directory}: method {meta['method']!r} changes the backbone's weights, so it cannot share "
                f"one backbone; shareable methods: {', '.join(backbone_sharing_methods())}"
            )
        kind = get_task(meta["task"]).backbone_kind
        if self.kind is not None and kind != self.kind:
            raise CheckpointError(f"{directory}: a {kind} task cannot share a {self.kind} backbone")
        task, model = attach_trained(checkpoint, self.backbone, self.tokenizer, self.fingerprint)
        entry = TaskEntry(name, task, self._settle(model), directory, meta)
        if entry.encoder is not None and entry.encoder.prompt_config.mode != "prefix":
            entry.encoder.remove()
            raise CheckpointError(f"{directory}: mixed-task batches need prompts in prompt.mode 'prefix'")
        entry.prompts  # noqa: B018  (read once here, on the loading thread, not in the first batch)
        with self._lock:
            self.kind = kind
            self.tasks[name] = entry
        return entry

    def _settle(self, model: nn.Module) -> nn.Module:
        """A new task model in eval mode on the server's device, walking only its own modules (prompt, head):
        the shared backbone, already there and in eval mode, is thousands of modules, and a server with a
        store loads tasks all the time."""
        own = [model]
        for module in own:
            own.extend(child for child in module.children() if child is not self.backbone)
            module.training = False
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                if tensor.device != self.device:
                    tensor.data = tensor.data.to(self.device)
        return model

    def remove(self, name: str) -> None:
        """Unload a task; the backbone and the other tasks stay as they are."""
        with self._lock:
            entry = self.entry(name)
            del self.tasks[name]
        if entry.encoder is not None:
            entry.encoder.remove()

    def entry(self, name: str) -> TaskEntry:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(f"unknown task {name!r}; loaded: {sorted(self.tasks)}") from None

    def delivery(self, tasks: Sequence[str]) -> Delivery:
        """Per-row prefixes for a batch whose row ``i`` belongs to ``tasks[i]``: each slot's keys and values
        are gathered by row into this thread's reused buffers (so a delivery holds until this thread asks
        for the next one), padded with zeros to the longest task's prompt; the unused positions of each row
        are masked out (no mask where every task fills the slot)."""
        entries = {name: self.entry(name) for name in dict.fromkeys(tasks)}
        prompts = {name: entry.prompts for name, entry in entries.items()}
        if len(prompts) == 1:
            return self.injector.deliver(next(iter(prompts.values())))
        per_row, masks = {}, {}
        for slot in dict.fromkeys(s for p in prompts.values() for s in p):
            lengths = {name: p[slot].shape[0] if slot in p else 0 for name, p in prompts.items()}
            longest = max(lengths.values())
            reference = next(p[slot] for p in prompts.values() if slot in p)
            pairs = {name: entry.key_value(slot) for name, entry in entries.items()}
            gathered = []
            for part in (0, 1):  # keys, then values
                shape = (len(tasks), longest, reference.shape[-1] // 2)
                rows = self._buffers.take((slot, part), shape, reference)
                if min(lengths.values()) == longest:  # one copy, row by row
                    torch.stack([pairs[t][part] for t in tasks], out=rows)
                else:  # zeros, then each row's prompt into it (no padded copy of any prompt)
                    rows.zero_()
                    for i, name in enumerate(tasks):
                        if pairs[name] is not None:
                            rows[i, : lengths[name]].copy_(pairs[name][part])
                gathered.append(rows)
            per_row[slot] = tuple(gathered)
            if min(lengths.values()) < longest:
                positions = torch.arange(longest, device=reference.device)
                masks[slot] = (
                    positions < torch.tensor([lengths[t] for t in tasks], device=reference.device)[:, None]
                )
        return self.injector.deliver(per_row, masks)

    def _inputs(self, batch: Mapping[str, torch.Tensor], tasks: Sequence[str], keys: Sequence[str]) -> dict:
        inputs = {k: batch[k].to(self.device) for k in keys if k in batch}
        if self.kind == "causal_lm":
            offsets = torch.tensor([self.entry(t).position_offset for t in tasks], device=self.device)
            inputs = decoder_positions(inputs, offsets)
        return inputs

    @torch.no_grad()
    def run(self, batch: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        """One backbone pass over a padded batch whose row ``i`` belongs to ``tasks[i]``, then every row's own
        head (``heads_by_row``: the linear heads of all tasks as one product). Returns, per row, that row's
        task-model outputs (``logits``, ...)."""
        if len(tasks) != batch["input_ids"].shape[0]:
            raise ValueError(f"{len(tasks)} task names for a batch of {batch['input_ids'].shape[0]} rows")
        if self.kind != "encoder":
            raise ValueError("run() serves encoder tasks; generation tasks use generate()")
        outputs = self.backbone(
            **self._inputs(batch, tasks, list(encoder_inputs(batch))), **{PROMPTS_KWARG: self.delivery(tasks)}
        )
        names = list(dict.fromkeys(tasks))
        number = {name: i for i, name in enumerate(names)}
        models = [self.entry(name).model for name in names]
        batch = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return heads_by_row(models, [number[t] for t in tasks], outputs, batch)

    @torch.no_grad()
    def generate(
        self, batch: Mapping[str, torch.Tensor], tasks: Sequence[str], **options: Any
    ) -> list[list[int]]:
        """Generated token ids per row, every row with its own task's prompt (one ``generate`` call).

        Decoder-only models take the left-padded ``input_ids``/``attention_mask`` and return the new tokens;
        encoder-decoders return the decoder's tokens."""
        if self.kind == "encoder":
            raise ValueError("generate() needs a generation backbone (causal_lm or seq2seq tasks)")
        inputs = self._inputs(batch, tasks, ["input_ids", "attention_mask"])
        out = self.backbone.generate(**inputs, **options, **{PROMPTS_KWARG: self.delivery(tasks)})
        if self.kind == "causal_lm":
            out = out[:, inputs["input_ids"].shape[1] :]
        return out.tolist()

    def close(self) -> None:
        """Unload every task and give the backbone back as it was."""
        for name in list(self.tasks):
            self.remove(name)
        self.injector.remove()
