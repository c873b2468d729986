"""Preparing a model for Accelerate's sharded back-ends (FSDP, DeepSpeed) when only a few weights train.

FSDP2 is meant for models whose every weight trains. Here the backbone is frozen and what trains
(prompts, a head, LoRA matrices) is small, so only the frozen weights are worth sharding. The trained
parameters are left out of FSDP's shards (``ignored_params``): each process keeps them whole, so
checkpoints, the resumable state and the optimizer see ordinary tensors, exactly as without FSDP, and
their gradients are averaged across processes by a hook, as DDP would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from ptuning_v2.config import ConfigError, TrainConfig


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
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["train_batch_size"] = cfg.batch_size * accelerator.num_processes
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = cfg.grad_clip or 0.0
