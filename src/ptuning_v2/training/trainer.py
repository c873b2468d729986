"""The training loop, on Hugging Face Accelerate: multi-process and mixed precision come from it.

Shuffling is a seeded permutation per epoch, so a run can stop anywhere and resume exactly: the
resumable state (trained tensors, optimizer moments, schedule, RNG, position in the epoch) is
written with safetensors + JSON at every evaluation and every ``save_every`` steps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from ptuning_v2.config import RunConfig
from ptuning_v2.evaluation.runner import evaluate_split
from ptuning_v2.tasks.base import Task
from ptuning_v2.training.checkpoint import save_tensors, trainable_state
from ptuning_v2.training.optim import build_optimizer, build_scheduler
from ptuning_v2.utils.io import write_json_atomic

STATE_DIR = "last"


@dataclass
class TrainState:
    """Everything besides tensors that an exact resume needs."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_mixed_precision(value: str) -> str:
    """``auto``: bf16 on a CUDA GPU that supports it, full precision elsewhere."""
    if value != "auto":
        return value
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches for one epoch: a seeded permutation, split across processes."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if world > 1:
        order += order[: (-len(order)) % world]  # pad so every process gets as many examples
        order = order[rank::world]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class Trainer:
    """Trains the parameters of ``model`` that require grad; evaluates with the task's metrics."""

    def __init__(
        self,
        run: RunConfig,
        task: Task,
        model: nn.Module,
        train_features: list[dict[str, Any]],
        eval_sets: dict[str, tuple[Any, list[dict[str, Any]]]],
        output_dir: str | Path,
        save_checkpoint: Callable[[Path, nn.Module], int],
        show_progress: bool = True,
    ) -> None:
        self.run = run
        self.cfg = run.train
        self.task = task
        self.train_features = train_features
        self.eval_sets = eval_sets
        self.output_dir = Path(output_dir)
        self.save_checkpoint = save_checkpoint
        self.show_progress = show_progress
        # cpu=True without a GPU lets several CPU processes (torchrun / accelerate launch) train with gloo.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=resolve_mixed_precision(self.cfg.mixed_precision),
        )
        self.optimizer = build_optimizer(model, self.cfg)
        world = self.accelerator.num_processes
        micro_per_epoch = math.ceil(math.ceil(len(train_features) / world) / self.cfg.batch_size)
        self.steps_per_epoch = max(1, micro_per_epoch // self.cfg.grad_accum_steps)
        self.total_steps = self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.metric_name = self.cfg.metric_for_best or task.main_metric
        self.state = TrainState()
        self.log_every = max(1, self.total_steps // 50)

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    def evaluate(self, split: str) -> dict[str, Any]:
        dataset, features = self.eval_sets[split]
        return evaluate_split(
            self.task,
            self.unwrapped,
            dataset,
            features,
            self.cfg.eval_batch_size,
            self.accelerator.device,
            self.accelerator.autocast(),
        )

    def _log(self, record: dict[str, Any]) -> None:
        self.state.history.append(record)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _improved(self, value: float) -> bool:
        best = self.state.best_metric
        if best is None:
            return True
        return value > best if self.task.higher_is_better else value < best

    def _evaluate_and_select(self) -> None:
        if "validation" not in self.eval_sets:
            return
        metrics = self.evaluate("validation")
        if self.metric_name not in metrics:
            raise ValueError(f"train.metric_for_best {self.metric_name!r} is not among {sorted(metrics)}")
        value = float(metrics[self.metric_name])
        flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        self._log({"type": "eval", "split": "validation", "step": self.state.step, **flat})
        if self._improved(value):
            self.state.best_metric, self.state.best_step, self.state.bad_evals = value, self.state.step, 0
            if self.accelerator.is_main_process:
                self.save_checkpoint(self.output_dir / "checkpoint", self.unwrapped)
        else:
            self.state.bad_evals += 1
            patience = self.cfg.early_stopping_patience
            if patience is not None and self.state.bad_evals >= patience:
                self.state.stopped_early = True
        self.save_state()

    # ---- resumable state -------------------------------------------------------------------
    def save_state(self) -> None:
        if not self.accelerator.is_main_process:
            return
        directory = self.output_dir / STATE_DIR
        tensors = {f"model.{k}": v for k, v in trainable_state(self.unwrapped).items()}
        optim = self.optimizer.state_dict()
        for index, slot in optim["state"].items():
            for key, value in slot.items():
                tensors[f"optim.{index}.{key}"] = (
                    value if isinstance(value, torch.Tensor) else torch.tensor(value)
                )
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_tensors(directory / "state.safetensors", tensors)
        write_json_atomic(
            directory / "state.json",
            {
                "train_state": asdict(self.state),
                "param_groups": optim["param_groups"],
                "scheduler": self.scheduler.state_dict(),
                "total_steps": self.total_steps,
            },
        )

    def load_state(self) -> None:
        directory = self.output_dir / STATE_DIR
        if not (directory / "state.json").is_file():
            raise FileNotFoundError(f"{directory}: no resumable state to resume from")
        meta = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        if meta["total_steps"] != self.total_steps:
            raise ValueError(
                f"{directory}: the saved run planned {meta['total_steps']} steps, this config plans "
                f"{self.total_steps}; resume with the same config"
            )
        tensors = load_file(str(directory / "state.safetensors"))
        params = dict(self.unwrapped.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                if name.startswith("model."):
                    params[name[len("model.") :]].copy_(value)
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                optim_state.setdefault(int(index), {})[key] = value
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        self.state = TrainState(**meta["train_state"])

    # ---- the loop --------------------------------------------------------------------------
    def train(self, resume: bool = False, stop_at_step: int | None = None) -> TrainState:
        """Train to ``total_steps`` (or early stopping); ``stop_at_step`` pauses for a later resume."""
        if resume:
            self.load_state()
        cfg, acc, state = self.cfg, self.accelerator, self.state
        model = self.model
        model.train()
        bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            disable=not (self.show_progress and acc.is_main_process),
            desc=f"{self.run.method} {self.run.task}",
            dynamic_ncols=True,
        )
        started = time.perf_counter() - state.train_seconds
        running_loss, running_count = 0.0, 0
        while state.step < self.total_steps and not state.stopped_early:
            batches = epoch_batches(
                len(self.train_features),
                cfg.batch_size,
                cfg.seed,
                state.epoch,
                acc.process_index,
                acc.num_processes,
            )
            usable = len(batches) - len(batches) % cfg.grad_accum_steps or len(batches)
            for micro in range(state.micro_in_epoch, usable):
                batch = self._to_device(self.task.collate([self.train_features[i] for i in batches[micro]]))
                last_micro = (micro + 1) % cfg.grad_accum_steps == 0 or micro + 1 == usable
                context = acc.no_sync(model) if not last_micro else nullcontext()
                with context, acc.autocast():
                    loss = model(batch)["loss"]
                    acc.backward(loss / cfg.grad_accum_steps)
                running_loss += float(loss.detach())
                running_count += 1
                state.micro_in_epoch = micro + 1
                if not last_micro:
                    continue
                if cfg.grad_clip:
                    acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                state.step += 1
                bar.update(1)
                state.train_seconds = time.perf_counter() - started
                if state.step % self.log_every == 0 or state.step == self.total_steps:
                    mean_loss = running_loss / max(running_count, 1)
                    running_loss, running_count = 0.0, 0
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    self._log(
                        {
                            "type": "train",
                            "step": state.step,
                            "epoch": state.epoch,
                            "loss": mean_loss,
                            "lr": self.scheduler.get_last_lr()[0],
                            "elapsed": round(state.train_seconds, 2),
                        }
                    )
                at_end = state.step == self.total_steps
                if (cfg.eval_every and state.step % cfg.eval_every == 0) or (at_end and not cfg.eval_every):
                    self._evaluate_and_select()
                    if state.best_metric is not None:
                        bar.set_postfix({f"best_dev_{self.metric_name}": f"{state.best_metric:.4f}"})
                elif cfg.save_every and state.step % cfg.save_every == 0:
                    self.save_state()
                if state.stopped_early or at_end:
                    break
                if stop_at_step is not None and state.step >= stop_at_step:
                    self.save_state()
                    bar.close()
                    return state
            else:
                state.epoch += 1
                state.micro_in_epoch = 0
                if not cfg.eval_every and state.step < self.total_steps:
                    self._evaluate_and_select()
        bar.close()
        state.train_seconds = time.perf_counter() - started
        if "validation" not in self.eval_sets and acc.is_main_process:
            self.save_checkpoint(self.output_dir / "checkpoint", self.unwrapped)
        self.save_state()
        return state
