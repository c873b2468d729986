"""The training loop, on Hugging Face Accelerate: multi-process and mixed precision come from it.

Shuffling is a seeded permutation per epoch, so a run can stop anywhere and resume exactly: the
resumable state (trained tensors, optimizer moments, schedule, RNG of every process, position in the
epoch, the run config) is one folder ``states/step-N`` renamed into place at every evaluation and
every ``save_every`` steps; a process killed at any moment resumes from the newest complete one.
With several processes, evaluation is sharded: each process runs the model on its share of the
batches and every process computes the task's metrics over all of them.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from ptuning_v2.checkpoint import CheckpointError, trainable_state
from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.tasks.base import Task, evaluate_split
from ptuning_v2.training.optim import build_optimizer, build_scheduler
from ptuning_v2.training.sharding import (
    accelerator_options,
    full_trained_params,
    is_zero3,
    load_optimizer_state,
    load_trained_state,
    optimizer_state,
    prepare_for_training,
    release_precision,
)
from ptuning_v2.training.states import (
    STATES_DIR,
    clean_partial_states,
    complete_states,
    crash_point,
    read_state,
    read_state_meta,
    write_state,
)
from ptuning_v2.training.tracking import (
    TRACKER_PROJECT,
    flatten_config,
    progress_bar,
    summary_line,
    tracker_values,
    trackers,
)
from ptuning_v2.utils.io import write_text_atomic

SAFE_ON_RESUME = (
    "output_dir",
    "train.epochs",
    "train.max_steps",
    "train.eval_every",
    "train.eval_batch_size",
    "train.save_every",
    "train.keep_states",
    "train.early_stopping_patience",
    "train.log_with",
)
"""Settings a resume may change: they touch only what is still to come, not the trajectory taken."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before saving anything from that step."""


def newest_state(output_dir: str | Path) -> Path:
    """The newest complete resumable state of the run in ``output_dir``."""
    if not Path(output_dir).is_dir():
        raise CheckpointError(f"{output_dir}: no such folder, so no run to resume; start it without --resume")
    states = complete_states(Path(output_dir) / STATES_DIR)
    if not states:
        raise CheckpointError(
            f"{Path(output_dir) / STATES_DIR}: no complete resumable state to resume from "
            "(start the run again with --overwrite)"
        )
    return states[-1][1]


RUN_FILES = ("metrics.json", "log.jsonl", "checkpoint", STATES_DIR, "last")
"""What a training run writes into its folder (``last``: the state folder of earlier versions)."""


def prepare_output_dir(output_dir: Path, run: RunConfig, resume: bool, overwrite: bool) -> None:
    """A fresh run never mixes with an earlier one: refuse a folder that holds a run unless asked to
    overwrite it (its run files are removed, nothing else); a resume checks its settings first."""
    refuse_a_file(output_dir)
    if resume:
        if overwrite:
            raise ConfigError("--resume continues the run in the folder, --overwrite replaces it: pick one")
        state = newest_state(output_dir)
        resume_changes(read_state_meta(state)["run_config"], run, state)  # refuse before loading the model
        return
    replace_run_files(output_dir, RUN_FILES, overwrite, ", --resume to continue it")


def refuse_a_file(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {output_dir}: is a file, not a folder; choose another --output-dir")


def replace_run_files(
    output_dir: Path, names: tuple[str, ...], overwrite: bool, alternatives: str = ""
) -> None:
    """Refuse a folder that holds any of a run's files ``names`` unless ``overwrite``; then remove those
    files, nothing else."""
    refuse_a_file(output_dir)
    found = [name for name in names if (output_dir / name).exists()]
    if found and not overwrite:
        raise ConfigError(
            f"{output_dir}: holds a previous run ({', '.join(found)}); pass --overwrite to replace it"
            f"{alternatives}, or choose another --output-dir"
        )
    for name in found:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)  # several processes may remove it at once
        else:
            path.unlink(missing_ok=True)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_changes(stored: dict[str, Any], run: RunConfig, where: str | Path) -> list[str]:
    """The changed settings a resume applies (``key (old -> new)``); any other change is refused."""
    old, new = _flat(stored), _flat(run.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    refused = [k for k in changed if k not in SAFE_ON_RESUME]
    if refused:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in refused)
        raise ConfigError(
            f"{where}: cannot resume with changed {shown}: the run so far was trained with the stored "
            f"values; resume without changing them, or start a fresh run with --overwrite "
            f"(a resume may change only {', '.join(SAFE_ON_RESUME)})"
        )
    return [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed]


class _Outputs(dict):
    """Outputs another process computed; a key it did not keep is computed here, on demand."""

    def __init__(self, kept: dict[str, torch.Tensor], compute: Callable[[], dict[str, Any]]) -> None:
        super().__init__(kept)
        self._compute = compute

    def __missing__(self, key: str) -> Any:
        self.update({k: v for k, v in self._compute().items() if k not in self})
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class _Replay:
    """The model as a task's ``evaluate`` sees it: the forward call on the batch being replayed returns
    the gathered outputs; anything else (``generate``, other inputs) runs the real model."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self.batch: dict[str, Any] | None = None
        self.outputs: dict[str, torch.Tensor] = {}

    def __call__(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if batch is self.batch and not args and not kwargs:
            return _Outputs(self.outputs, lambda: self._model(batch))
        return self._model(batch, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


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
    running_loss: float = 0.0
    """Sum of the losses since the last logged one (and their count): a resume logs the same means."""
    running_count: int = 0
    eval_seconds: float = 0.0
    stopped_early: bool = False
    out_of_time: bool = False
    """Stopped at ``train.max_seconds`` of optimisation time (evaluation does not count)."""
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
        on_evaluate: Callable[[int, float], None] | None = None,
        data_report: dict[str, Any] | None = None,
    ) -> None:
        """``on_evaluate(step, dev_metric)`` runs after each dev evaluation (a search may stop a weak run);
        ``data_report`` (records read, used, skipped, changed per split) opens a fresh run's log."""
        self.run = run
        self.cfg = run.train
        self.task = task
        self.train_features = train_features
        self.eval_sets = eval_sets
        self.output_dir = Path(output_dir)
        self.save_checkpoint = save_checkpoint
        self.show_progress = show_progress
        self.on_evaluate = on_evaluate
        self.data_report = data_report
        self._written = 0  # records of state.history already in log.jsonl
        precision = resolve_mixed_precision(self.cfg.mixed_precision)
        release_precision(precision)
        self.accelerator = Accelerator(
            **accelerator_options(),
            mixed_precision=precision,
            log_with=trackers(self.cfg.log_with),
            project_dir=str(self.output_dir),
        )
        self.optimizer = build_optimizer(model, self.cfg)
        world = self.accelerator.num_processes
        micro_per_epoch = math.ceil(math.ceil(len(train_features) / world) / self.cfg.batch_size)
        self.steps_per_epoch = max(1, micro_per_epoch // self.cfg.grad_accum_steps)
        self.total_steps = self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.total_steps)
        # The parameters as the optimizer numbers them: DeepSpeed's optimizer replaces them by flat partitions.
        self.optimizer_groups = [list(group["params"]) for group in self.optimizer.param_groups]
        self.model, self.optimizer = prepare_for_training(self.accelerator, model, self.optimizer, self.cfg)
        self.metric_name = self.cfg.metric_for_best or task.main_metric
        self.state = TrainState()
        self.log_every = max(1, self.total_steps // 50)
        if self.cfg.keep_states < 1:
            raise ConfigError(f"train.keep_states must be at least 1, got {self.cfg.keep_states}")
        self._saved_step: int | None = None

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    def evaluate(self, split: str) -> dict[str, Any]:
        """The task's metrics on ``split``; with several processes each runs the model on its share."""
        dataset, features = self.eval_sets[split]
        if self.accelerator.num_processes > 1:
            return self._evaluate_sharded(dataset, features)
        return evaluate_split(
            self.task,
            self.unwrapped,
            dataset,
            features,
            self.cfg.eval_batch_size,
            self.accelerator.device,
            self.accelerator.autocast(),
        )

    def _evaluate_sharded(self, dataset: Any, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch ``i`` runs on process ``i % world``; the outputs are gathered and the task's own
        ``evaluate`` replays them in order, so the metrics equal a single-process evaluation's."""
        acc, model, size = self.accelerator, self.unwrapped, self.cfg.eval_batch_size
        starts = list(range(0, len(features), size))
        # Encoder heads' outputs are small; a language model's vocabulary logits are not: keep its loss.
        keep = None if self.task.backbone_kind == "encoder" else {"loss"}
        was_training = model.training
        model.eval()
        try:
            mine: dict[int, dict[str, torch.Tensor]] = {}
            with torch.no_grad(), acc.autocast():
                for start in starts[acc.process_index :: acc.num_processes]:
                    out = model(self._to_device(self.task.collate(features[start : start + size])))
                    mine[start] = {
                        k: v.cpu()
                        for k, v in out.items()
                        if isinstance(v, torch.Tensor) and (keep is None or k in keep)
                    }
                # each FSDP or ZeRO-3 forward gathers weights from all processes: run as many
                if acc.is_fsdp2 or is_zero3(acc):
                    for _ in range(len(mine), -(-len(starts) // acc.num_processes)):
                        model(self._to_device(self.task.collate(features[:size])))
            outputs: dict[int, dict[str, torch.Tensor]] = {}
            for part in gather_object([mine]):
                outputs.update(part)
            replay = _Replay(model)

            def replayed() -> Any:
                for start in starts:
                    batch = self._to_device(self.task.collate(features[start : start + size]))
                    replay.batch = batch
                    replay.outputs = {k: v.to(acc.device) for k, v in outputs[start].items()}
                    yield batch

            with torch.no_grad(), acc.autocast():
                return self.task.evaluate(replay, replayed(), dataset, features)  # type: ignore[arg-type]
        finally:
            model.train(was_training)

    def _log(self, record: dict[str, Any]) -> None:
        self.state.history.append(record)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            line = "".join(json.dumps(r) + "\n" for r in self.state.history[self._written :])
            with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
                crash_point("log", record["step"], before=lambda: (f.write(line[:20]), f.flush()))
                f.write(line)
        self._written = len(self.state.history)
        if self.cfg.log_with:
            self.accelerator.log(tracker_values(record), step=record["step"])

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):  # a NaN metric is never the best checkpoint
            return False
        best = self.state.best_metric
        if best is None:
            return True
        return value > best if self.task.higher_is_better else value < best

    def _all_finite(self, finite: bool) -> bool:
        """Did every process see a finite loss and gradient? Every process gets the same answer."""
        if self.accelerator.num_processes == 1:
            return finite
        votes = self.accelerator.reduce(torch.tensor([float(not finite)], device=self.accelerator.device))
        return bool(votes.item() == 0)

    def _diverged(self, loss: float) -> None:
        """Stop: nothing from this step is saved; the last state and best checkpoint stay as they were."""
        states = complete_states(self.output_dir / STATES_DIR)
        last = f"the last good state is {states[-1][1]}" if states else "no resumable state was saved yet"
        best = self.output_dir / "checkpoint"
        kept = (
            f"the best checkpoint {best} (step {self.state.best_step})" if best.is_dir() else "no checkpoint"
        )
        raise TrainingDivergedError(
            f"training diverged at step {self.state.step + 1}: the loss or its gradient is not finite "
            f"(loss {loss}, train.lr={self.cfg.lr}); stopped without saving it; {last}, {kept} is kept; "
            "lower train.lr (or set train.grad_clip) and start again with --overwrite"
        )

    def _out_of_time(self) -> bool:
        """``train.max_seconds`` of optimisation time spent? Every process gets the same answer."""
        limit = self.cfg.max_seconds
        if limit is None:
            return False
        done = float(self.state.train_seconds - self.state.eval_seconds >= limit)
        if self.accelerator.num_processes == 1:
            return bool(done)
        votes = self.accelerator.reduce(torch.tensor([done], device=self.accelerator.device), "sum")
        return bool(votes.item() > 0)

    def _evaluate_and_select(self) -> None:
        if "validation" not in self.eval_sets:
            return
        started = time.perf_counter()
        metrics = self.evaluate("validation")
        if self.metric_name not in metrics:
            raise ValueError(f"train.metric_for_best {self.metric_name!r} is not among {sorted(metrics)}")
        value = float(metrics[self.metric_name])
        flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        self._log({"type": "eval", "split": "validation", "step": self.state.step, **flat})
        if self._improved(value):  # the same answer on every process: the metrics are computed on each
            self.state.best_metric, self.state.best_step, self.state.bad_evals = value, self.state.step, 0
            self._save_checkpoint()
        else:
            self.state.bad_evals += 1
            patience = self.cfg.early_stopping_patience
            if patience is not None and self.state.bad_evals >= patience:
                self.state.stopped_early = True
        self.save_state()
        self.state.eval_seconds += time.perf_counter() - started
        if self.on_evaluate is not None:
            self.on_evaluate(self.state.step, value)

    def _save_checkpoint(self) -> None:
        """Write the best checkpoint (process 0); under DeepSpeed every process helps gather the tensors."""
        with full_trained_params(self.accelerator, self.unwrapped):
            if self.accelerator.is_main_process:
                self.save_checkpoint(self.output_dir / "checkpoint", self.unwrapped)

    # ---- resumable state -------------------------------------------------------------------
    def save_state(self) -> None:
        """Write this step's resumable state (once per step) as one folder renamed into place."""
        if self._saved_step == self.state.step:
            return
        self._saved_step = self.state.step
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        rng = gather_object([(torch.get_rng_state(), cuda)])  # every process's generators, in rank order
        with full_trained_params(self.accelerator, self.unwrapped):
            tensors = {f"model.{k}": v.clone() for k, v in trainable_state(self.unwrapped).items()}
        optim, param_groups = optimizer_state(self.accelerator, self.optimizer, self.optimizer_groups)
        if not self.accelerator.is_main_process:
            return
        tensors.update(optim)
        for rank, (cpu, cuda) in enumerate(rng):
            tensors[f"rng.cpu.{rank}"] = cpu
            if cuda is not None:
                tensors[f"rng.cuda.{rank}"] = cuda
        meta = {
            "train_state": asdict(self.state),
            "param_groups": param_groups,
            "scheduler": self.scheduler.state_dict(),
            "total_steps": self.total_steps,
            "num_processes": self.accelerator.num_processes,
            "train_examples": len(self.train_features),
            "run_config": self.run.to_dict(),
        }
        write_state(self.output_dir / STATES_DIR, self.state.step, tensors, meta, self.cfg.keep_states)

    def load_state(self, directory: Path) -> None:
        """Continue exactly from ``directory``; only the settings in ``SAFE_ON_RESUME`` may differ."""
        tensors, meta = read_state(directory)
        applied = resume_changes(meta["run_config"], self.run, directory)
        if meta["num_processes"] != self.accelerator.num_processes:
            raise ConfigError(
                f"{directory}: the run was trained on {meta['num_processes']} process(es); resume it on "
                f"as many (this launch has {self.accelerator.num_processes})"
            )
        if meta["train_examples"] != len(self.train_features):
            raise ConfigError(
                f"{directory}: the run was trained on {meta['train_examples']} examples, the training data "
                f"now gives {len(self.train_features)}; resume with the same data"
            )
        state = TrainState(**meta["train_state"])
        if state.step > self.total_steps:
            raise ConfigError(
                f"{directory}: the state is at step {state.step}, past the {self.total_steps} steps this "
                "config plans; a resume may only extend a run"
            )
        trained = {name[len("model.") :]: v for name, v in tensors.items() if name.startswith("model.")}
        load_trained_state(self.accelerator, self.unwrapped, trained)
        load_optimizer_state(
            self.accelerator, self.optimizer, self.optimizer_groups, tensors, meta["param_groups"]
        )
        self.scheduler.load_state_dict(meta["scheduler"])  # the schedule's shape follows total_steps
        rank = self.accelerator.process_index
        torch.set_rng_state(tensors[f"rng.cpu.{rank}"])
        if f"rng.cuda.{rank}" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"])
        patience = self.cfg.early_stopping_patience  # it may have changed
        state.stopped_early = patience is not None and state.bad_evals >= patience
        self.state, self._saved_step, self._written = state, state.step, len(state.history)
        if self.accelerator.is_main_process:
            # The log again holds exactly the records up to this state: later ones are replayed.
            write_text_atomic(
                self.output_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in state.history)
            )
            note = f"; applying changed {', '.join(applied)}" if applied else ""
            print(f"resuming {self.output_dir} from step {state.step} ({directory.name}){note}", flush=True)

    # ---- the loop --------------------------------------------------------------------------
    @property
    def _desc(self) -> str:
        return f"{self.run.method} {self.run.task}"

    def _finish(self, bar: Any) -> None:
        """Close the bar and the trackers; one summary line, so a captured log has one line per run."""
        bar.close()
        if self.cfg.log_with:
            self.accelerator.end_training()
        if self.show_progress and self.accelerator.is_main_process:
            print(summary_line(self._desc, self.state, self.total_steps, self.metric_name), file=sys.stderr)

    def train(self, resume: bool = False, stop_at_step: int | None = None) -> TrainState:
        """Train to ``total_steps`` (or early stopping); ``stop_at_step`` pauses for a later resume."""
        if self.accelerator.is_main_process:
            clean_partial_states(self.output_dir / STATES_DIR)  # what a killed state write left
        if resume:
            self.load_state(newest_state(self.output_dir))
        elif self.data_report is not None:  # written with the first step's line: by then every process
            self.state.history.append({"type": "data", "step": 0, "report": self.data_report})  # has started
        cfg, acc, state = self.cfg, self.accelerator, self.state
        model = self.model
        model.train()
        bar = progress_bar(
            self.total_steps, state.step, self.show_progress and acc.is_main_process, self._desc
        )
        if cfg.log_with:
            acc.init_trackers(TRACKER_PROJECT, config=flatten_config(self.run.to_dict()))
        started = time.perf_counter() - state.train_seconds
        finite = True
        while state.step < self.total_steps and not (state.stopped_early or state.out_of_time):
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
                value = float(loss.detach())
                finite = finite and math.isfinite(value)
                state.running_loss += value
                state.running_count += 1
                state.micro_in_epoch = micro + 1
                if not last_micro:
                    continue
                if cfg.grad_clip:
                    norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # DeepSpeed: a float
                    finite = finite and math.isfinite(float(norm))
                if not self._all_finite(finite):
                    bar.close()
                    self._diverged(value)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                state.step += 1
                crash_point("step", state.step)
                bar.update(1)
                state.train_seconds = time.perf_counter() - started
                if state.step % self.log_every == 0 or state.step == self.total_steps:
                    mean_loss = state.running_loss / max(state.running_count, 1)
                    state.running_loss, state.running_count = 0.0, 0
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
                state.out_of_time = self._out_of_time()
                if (
                    (cfg.eval_every and state.step % cfg.eval_every == 0)
                    or at_end  # the last steps always count, even when eval_every does not divide them
                    or state.out_of_time
                ):
                    self._evaluate_and_select()
                    if state.best_metric is not None:
                        bar.set_postfix({f"best_dev_{self.metric_name}": f"{state.best_metric:.4f}"})
                elif cfg.save_every and state.step % cfg.save_every == 0:
                    self.save_state()
                if state.stopped_early or at_end or state.out_of_time:
                    break
                if stop_at_step is not None and state.step >= stop_at_step:
                    self.save_state()
                    self._finish(bar)
                    return state
            else:
                state.epoch += 1
                state.micro_in_epoch = 0
                if not cfg.eval_every and state.step < self.total_steps:
                    self._evaluate_and_select()
        state.train_seconds = time.perf_counter() - started
        self._finish(bar)
        if "validation" not in self.eval_sets:
            self._save_checkpoint()
        self.save_state()
        return state
