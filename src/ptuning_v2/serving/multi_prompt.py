"""One frozen backbone, many trained prompts: each task is a prompt of kilobytes and a small head.

``MultiPromptModel`` loads checkpoint folders onto one backbone (each checked against the backbone's
fingerprint), adds and removes them at run time, and runs **mixed-task batches**: one backbone pass
in which every row gets its own task's prefixes, followed by every row's own head (the linear heads
of all the batch's tasks as one product).

Prompts of different lengths share a batch by padding each layer's prefix to the longest one and
masking the unused positions per row (a task with no prompt at some layer has every position there
masked), so a row's result does not depend on its neighbours. The loaded prompts live in a
``PromptBank``, rows of one table per slot, from which a batch gathers its rows' prompts in one op.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptuning_v2.checkpoint import CheckpointError, TrainedCheckpoint, as_checkpoint
from ptuning_v2.injection.attention import PROMPTS_KWARG, Delivery, PrefixInjector
from ptuning_v2.methods import backbone_sharing_methods
from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
from ptuning_v2.prompts.model import DeepPromptModel, decoder_positions
from ptuning_v2.serving.prompt_bank import PromptBank
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

    @property
    def encoder(self) -> DeepPromptModel | None:
        encoder = getattr(self.model, "encoder", None)
        return encoder if isinstance(encoder, DeepPromptModel) else None

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


def task_name(directory: Path) -> str:
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
        self.bank = PromptBank()

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
            checkpoints = {task_name(Path(c)): c for c in checkpoints}
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
            raise CheckpointError(f"{directory}: its {kind} task cannot run on this {self.kind} backbone")
        task, model = attach_trained(checkpoint, self.backbone, self.tokenizer, self.fingerprint)
        entry = TaskEntry(name, task, self._settle(model), directory, meta)
        if entry.encoder is not None and entry.encoder.prompt_config.mode != "prefix":
            entry.encoder.remove()
            raise CheckpointError(f"{directory}: mixed-task batches need prompts in prompt.mode 'prefix'")
        with torch.no_grad():
            prompts = entry.encoder.prompt.raw() if entry.encoder is not None else {}
        with self._lock:
            self.bank.put(name, prompts)
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
            self.bank.drop(name)
        if entry.encoder is not None:
            entry.encoder.remove()

    def entry(self, name: str) -> TaskEntry:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(f"unknown task {name!r}; loaded: {sorted(self.tasks)}") from None

    def delivery(self, tasks: Sequence[str]) -> Delivery:
        """Per-row prefixes for a batch whose row ``i`` belongs to ``tasks[i]``: one task's prompt is copied
        once and shared by every row; the prompts of several are gathered by row from the bank into this
        thread's reused buffers (so a delivery holds until this thread asks for the next one), with the
        unused positions of rows whose prompt is shorter masked out."""
        names = list(dict.fromkeys(tasks))
        try:
            if len(names) == 1:
                return self.injector.deliver(self.bank.prompts(names[0]))
            return self.injector.deliver(*self.bank.gather(tasks))
        except KeyError:
            for name in names:
                self.entry(name)  # UnknownTaskError for the first one not loaded
            raise

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
