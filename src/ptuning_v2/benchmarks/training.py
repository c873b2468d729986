"""Training-step cost of P-Tuning v2 against full fine-tuning, LoRA and PEFT's prefix tuning.

A step is what the trainer does per batch: forward with the task loss, backward, AdamW step over
the trained parameters, gradients reset. Every variant trains on the same batch, each on its own
copy of the backbone, interleaved round by round; full fine-tuning is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptuning_v2.benchmarks import variants
from ptuning_v2.benchmarks.cases import Case, Key, Row
from ptuning_v2.benchmarks.timing import MIB, module_bytes, peak_bytes, tensor_bytes
from ptuning_v2.prompts.model import DeepPromptModel

REFERENCE: Key = ("full", None)
EVAL_BACKBONE = "ptuning_v2_eval_backbone"


@dataclass(frozen=True)
class TrainingCase(Case):
    """Full fine-tuning is the reference; ``peft_lengths`` are PEFT prefix tuning's lengths."""

    eval_backbone_lengths: tuple[int, ...] = ()
    """P-Tuning v2 lengths also timed with the frozen backbone in eval mode (no dropout inside it)."""
    lora: bool = True
    rounds: int = 6


@dataclass
class TrainingRow(Row):
    """Variants: ``full``, ``lora``, ``ptuning_v2``, ``ptuning_v2_eval_backbone`` or ``peft_prefix``;
    ``peak_mib`` covers one step."""

    trainable_params: int | None = None
    step_p50_ms: float | None = None
    step_p90_ms: float | None = None


class Stepper:
    """One model, its AdamW optimizer and the batch: ``step()`` is one training step."""

    def __init__(self, model: nn.Module, batch: dict[str, torch.Tensor], eval_backbone: bool = False) -> None:
        self.model = model.train()
        if eval_backbone:
            for module in model.modules():
                if isinstance(module, DeepPromptModel):
                    module.backbone.eval()
        self.batch = batch
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trained, lr=1e-5)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.model(self.batch)["loss"].backward()
        self.optimizer.step()

    def persistent_bytes(self) -> int:
        """Weights and optimizer state: what lives between steps (gradients are freed by ``step``)."""
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return module_bytes(self.model) + tensor_bytes(state)


def build_variant(
    case: TrainingCase, name: str, k: int | None, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """A fresh backbone adapted by method ``name``, with the task loss on top."""
    backbone = variants.backbone(case.model, case.kind, device, dtype)
    hidden = backbone.config.get_text_config().hidden_size
    if name == "full":
        encoder = variants.full(backbone)
    elif name == "lora":
        encoder = variants.lora(backbone)
    elif name in ("ptuning_v2", EVAL_BACKBONE):
        encoder = variants.ptuning_v2(backbone, k or 0, device, dtype)
    else:
        encoder = variants.peft_prefix(backbone, case.kind, k or 0, device, dtype)
    return variants.with_loss(encoder, case.kind, hidden).to(device=device, dtype=dtype)


def run_training_case(
    case: TrainingCase, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> list[TrainingRow]:
    """Step time, peak memory and the ratio to full fine-tuning of every variant of ``case``."""
    keys: list[Key] = [REFERENCE]
    keys += [("lora", None)] if case.lora else []
    keys += [("ptuning_v2", k) for k in case.lengths] + [
        (EVAL_BACKBONE, k) for k in case.eval_backbone_lengths
    ]
    keys += [("peft_prefix", k) for k in case.peft_lengths]
    steppers: dict[Key, Stepper] = {}
    errors: dict[Key, str] = {}
    batch = case.inputs(device, seed, labels=case.kind == "encoder")
    for key in keys:
        torch.manual_seed(seed)
        try:
            model = build_variant(case, *key, device, dtype)
            steppers[key] = Stepper(model, batch, eval_backbone=key[0] == EVAL_BACKBONE)
            steppers[key].step()
        except Exception as exc:  # PEFT on models it cannot prefix: a result, not a crash
            if key == REFERENCE:
                raise
            steppers.pop(key, None)
            errors[key] = f"{type(exc).__name__}: {exc}"
    summaries = case.time({key: stepper.step for key, stepper in steppers.items()}, REFERENCE, device, seed)
    rows = [
        TrainingRow.measured(
            case,
            key,
            summary,
            trainable_params=sum(p.numel() for p in steppers[key].trained),
            step_p50_ms=summary.p50_ms,
            step_p90_ms=summary.p90_ms,
            peak_mib=(steppers[key].persistent_bytes() + peak_bytes(steppers[key].step)) / MIB,
        )
        for key, summary in summaries.items()
    ]
    return rows + TrainingRow.failed(case, errors)
