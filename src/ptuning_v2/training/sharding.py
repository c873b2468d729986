"""Preparing a model for Accelerate's sharded back-ends (FSDP, DeepSpeed) when only a few weights train.

FSDP2 is meant for models whose every weight trains. Here the backbone is frozen and what trains
(prompts, a head, LoRA matrices) is small, so only the frozen weights are worth sharding. The trained
parameters are left out of FSDP's shards (``ignored_params``): each process keeps them whole, so
checkpoints, the resumable state and the optimizer see ordinary tensors, exactly as without FSDP, and
their gradients are averaged across processes by a hook, as DDP would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, parse_flag_from_env
from torch import nn

from ptuning_v2.config import ConfigError, TrainConfig


def launched() -> bool:
    """Whether this process is one of a group started by ``torchrun`` or ``accelerate launch``."""
    return os.environ.get("LOCAL_RANK", "").strip() not in ("", "-1")  # set empty: not launched


def release_precision(mixed_precision: str) -> None:
    """Let this process train in ``mixed_precision`` after a finished run in another one.

    Accelerate keeps the first run's precision for the whole process and refuses another one
    ("AcceleratorState has already been initialized ... restart your runtime"): a notebook or script that
    trains a bf16 run, then a full-precision one, stopped there. A process outside a launched group trains
    its runs one after another, so the finished run's state is dropped; a launched process trains one run,
    and keeps it.
    """
    state = AcceleratorState._shared_state
    if state and not launched() and state.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state()


def accelerator_options() -> dict[str, Any]:
    """The ``Accelerator`` arguments for this machine and launch.

    Without CUDA, ``cpu=True`` lets several CPU processes train with gloo, but Accelerate then drops a
    DeepSpeed config without a word (plain DDP). DeepSpeed has a CPU accelerator whose collectives fall
    back to gloo; Accelerate reaches it when it is not told ``cpu`` and is given the backend.
    """
    if torch.cuda.is_available():
        return {"cpu": False}
    if launched() and parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {"cpu": True}


def prepare_for_training(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``accelerator.prepare(model, optimizer)``, with the trained weights kept whole under FSDP."""
    if accelerator.is_fsdp2:
        trained = _keep_trained_whole(accelerator, model)
        model, optimizer = accelerator.prepare(model, optimizer)
        _average_grads_across_processes(trained, accelerator.num_processes)
        return model, optimizer
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            "FSDP version 1 is not supported (it flattens frozen and trained weights into one shard): "
            "set fsdp_version: 2 in the accelerate config (see configs/accelerate/fsdp.yaml)"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed(accelerator, cfg)
    return accelerator.prepare(model, optimizer)


def _keep_trained_whole(accelerator: Accelerator, model: nn.Module) -> list[nn.Parameter]:
    """Tell Accelerate's FSDP2 to leave the modules that own trained parameters out of the shards."""
    trained = [p for p in model.parameters() if p.requires_grad]
    owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    for module in owners:
        # fully_shard moves only the weights it shards to the device; these travel on their own.
        module.to(accelerator.device)
    accelerator.state.fsdp_plugin.ignored_modules = owners
    return trained


def _average_grads_across_processes(params: list[nn.Parameter], world: int) -> None:
    """Each backward's gradient of a replicated parameter becomes the mean over processes.

    Hooks fire in the autograd order, which is the same on every process, so the collectives match.
    The mean is taken per backward (before accumulation), hence correct under gradient accumulation.
    """

    def average(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)  # gloo has no AVG
        return grad / world

    for param in params:
        param.register_hook(average)


def _configure_deepspeed(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed settings that Accelerate would read from a prepared data loader (we have none)."""
    if cfg.grad_accum_steps != 1:
        raise ConfigError(
            "train.grad_accum_steps must be 1 under DeepSpeed (ZeRO 2/3 forbid the per-step no_sync this "
            "trainer uses); raise train.batch_size instead"
        )
    if accelerator.state.deepspeed_plugin.zero_stage not in (1, 2, 3):
        raise ConfigError(
            "DeepSpeed zero_stage 0 is plain data parallelism: set zero_stage 2 or 3 in the accelerate config "
            "(see configs/accelerate/deepspeed_zero3.yaml), or launch without DeepSpeed"
        )
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["train_batch_size"] = cfg.batch_size * accelerator.num_processes
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = cfg.grad_clip or 0.0


# ---- DeepSpeed ZeRO: whole trained tensors in and out --------------------------------------------
# ZeRO keeps the trained parameters' float32 master copy and their optimizer moments as flat partitions
# spread over the processes (ZeRO-3 partitions the module's own parameters too). The functions below read
# and write them per parameter through DeepSpeed's tensor-fragment API, so checkpoints and the resumable
# state keep the layout of a one-process run: whole tensors, the optimizer state numbered as in torch's
# ``Optimizer.state_dict``. They are collectives under DeepSpeed: every process must call them.


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def is_zero3(accelerator: Accelerator) -> bool:
    """ZeRO stage 3: the module's weights are partitioned, so every forward gathers them (a collective)."""
    return is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


def _trained(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def full_trained_params(accelerator: Accelerator, model: nn.Module) -> Iterator[None]:
    """Inside, every trained parameter of ``model`` holds its whole float32 master value on every process
    (ZeRO's partitions gathered), so checkpoints read it as in a one-process run. Read only."""
    if not is_deepspeed(accelerator):
        yield
        return
    from deepspeed.utils import safe_get_full_fp32_param

    params = _trained(model)
    full = [safe_get_full_fp32_param(p) for p in params]
    kept = [p.data for p in params]
    try:
        for param, value in zip(params, full, strict=True):
            param.data = value.reshape(getattr(param, "ds_shape", param.shape))
        yield
    finally:
        for param, data in zip(params, kept, strict=True):
            param.data = data


@contextmanager
def writable_trained_params(accelerator: Accelerator, model: nn.Module) -> Iterator[None]:
    """Inside, the trained parameters are whole tensors to copy values into (ZeRO-3 gathers them and
    partitions process 0's values again on exit); for inference only: the optimizer's float32 master
    copy under ZeRO is not updated (``load_trained_state`` does that)."""
    if not is_zero3(accelerator):
        yield
        return
    import deepspeed

    zero = accelerator.deepspeed_engine_wrapped.engine.optimizer
    zero.checkpoint_event_prologue()  # release every gathered weight first, as DeepSpeed's own load does
    with deepspeed.zero.GatheredParameters(_trained(model), modifier_rank=0):
        yield
    zero.checkpoint_event_epilogue()


def load_trained_state(accelerator: Accelerator, model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Set the trained parameters to ``values`` (by name) for training on: the module's weights and,
    under ZeRO, the optimizer's float32 master copy."""
    params = dict(model.named_parameters())
    with torch.no_grad(), writable_trained_params(accelerator, model):
        for name, value in values.items():
            params[name].copy_(value)
    if is_deepspeed(accelerator):
        from deepspeed.utils import safe_set_full_fp32_param

        for name, value in values.items():
            safe_set_full_fp32_param(params[name], value.to(accelerator.device, torch.float32))


def optimizer_state(
    accelerator: Accelerator, optimizer: torch.optim.Optimizer, groups: list[list[nn.Parameter]]
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The optimizer's state as ``{"optim.<index>.<key>": tensor}`` and its param groups, parameters
    numbered across ``groups`` (the groups it was built with) as in torch's ``state_dict``."""
    if not is_deepspeed(accelerator):
        saved = optimizer.state_dict()
        tensors = {
            f"optim.{index}.{key}": value if isinstance(value, torch.Tensor) else torch.tensor(value)
            for index, slot in saved["state"].items()
            for key, value in slot.items()
        }
        return tensors, saved["param_groups"]
    from deepspeed.utils import safe_get_full_optimizer_state

    base = _zero_base(optimizer, groups)
    _link_state_fragments(optimizer.optimizer)
    tensors: dict[str, torch.Tensor] = {}
    described: list[dict[str, Any]] = []
    index = 0
    for number, (group, params) in enumerate(zip(base.param_groups, groups, strict=True)):
        flat_state = base.state.get(_flat_partitions(optimizer.optimizer, number)[0], {})
        described.append({**{k: v for k, v in group.items() if k != "params"}, "params": []})
        for param in params:
            for key, value in flat_state.items():
                whole = value.dim() > 0  # a moment, partitioned like the parameter; else a count (step)
                full = safe_get_full_optimizer_state(param, key) if whole else value.clone()
                tensors[f"optim.{index}.{key}"] = (
                    full.reshape(getattr(param, "ds_shape", param.shape)) if whole else full
                )
            described[-1]["params"].append(index)
            index += 1
    return tensors, described


def load_optimizer_state(
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    groups: list[list[nn.Parameter]],
    tensors: dict[str, torch.Tensor],
    param_groups: list[dict[str, Any]],
) -> None:
    """Restore what ``optimizer_state`` returned (``tensors`` may hold other entries too)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    if not is_deepspeed(accelerator):
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
        return
    from deepspeed.utils import safe_set_full_optimizer_state

    zero = optimizer.optimizer
    base = _zero_base(optimizer, groups)
    index = 0
    for number, (group, saved, params) in enumerate(
        zip(base.param_groups, param_groups, groups, strict=True)
    ):
        group.update({k: v for k, v in saved.items() if k != "params"})
        slot = state.get(index, {})
        for flat in _flat_partitions(zero, number):  # torch makes the state at the first step: make it now
            base.state[flat] = {
                key: torch.zeros_like(flat) if value.dim() > 0 else value.clone()
                for key, value in slot.items()
            }
        index += len(params)
    _link_state_fragments(zero)
    index = 0
    for params in groups:
        for param in params:
            for key, value in state.get(index, {}).items():
                if value.dim() > 0:
                    safe_set_full_optimizer_state(param, value.to(accelerator.device), key)
            index += 1


def _flat_partitions(zero: Any, group: int) -> list[torch.Tensor]:
    """This process's flat float32 partitions of param group ``group``: the tensors the torch optimizer
    steps and keys its state by (ZeRO-3 splits a group into sub-groups and lists none in the group)."""
    if hasattr(zero, "fp32_partitioned_groups_flat"):  # ZeRO-3
        flats = zero.fp32_partitioned_groups_flat
        return [flat for sub, flat in enumerate(flats) if zero.sub_group_to_group_id[sub] == group]
    return list(zero.optimizer.param_groups[group]["params"])


def _link_state_fragments(zero: Any) -> None:
    """ZeRO-1/2 point each parameter at its fragment of the flat optimizer state once, right after the first
    param group's first step, when later groups have no state yet (DeepSpeed 0.19.8): point them again."""
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def _zero_base(optimizer: torch.optim.Optimizer, groups: list[list[nn.Parameter]]) -> torch.optim.Optimizer:
    """The torch optimizer inside ZeRO's (Accelerate's wrapper -> ZeRO optimizer -> torch optimizer), whose
    param groups are those the trainer built, each holding flat partitions instead of the parameters."""
    base = getattr(optimizer.optimizer, "optimizer", None)
    if not isinstance(base, torch.optim.Optimizer) or len(base.param_groups) != len(groups):
        raise ConfigError(
            "DeepSpeed: only ZeRO stages 1, 2 and 3 with the trainer's own optimizer are supported "
            "(set zero_stage in the accelerate config, and no optimizer in a DeepSpeed config file)"
        )
    return base
