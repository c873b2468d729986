"""Peak training memory of P-Tuning v2 with and without gradient (activation) checkpointing.

On long sequences the activations the backward pass keeps dominate a prompt-tuning step (the
backbone's weights get no gradients and no optimizer state). Checkpointing keeps only each layer's
input and recomputes the rest; the prompts travel with every layer call, so the recompute sees them.
Each variant trains one step on the same batch (warm-up), then one timed step, then one step under the
memory tracker.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ptuning_v2.benchmarks import variants
from ptuning_v2.benchmarks.timing import MIB, peak_bytes
from ptuning_v2.benchmarks.training import Stepper
from ptuning_v2.models import BackboneKind
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic


@dataclass
class CheckpointingRow:
    model: str
    seq_len: int
    batch: int
    k: int
    checkpointing: bool
    peak_activation_mib: float
    """Peak tensor memory allocated during one step, beyond the weights that live between steps."""
    step_seconds: float
    prompt_grad_norm: float
    """Equal with and without checkpointing: the recompute gives the prompts the same gradients."""


def measure(
    model: str, kind: BackboneKind, seq_len: int, batch: int, k: int, device: torch.device, dtype: torch.dtype
) -> list[CheckpointingRow]:
    vocab = variants.vocab_size(model)
    inputs = variants.random_inputs(vocab, batch, seq_len, device, seed=0, labels=kind == "encoder")
    rows = []
    for checkpointing in (False, True):
        backbone = variants.backbone(model, kind, device, dtype)
        if checkpointing:
            backbone.activation_checkpointing_enable()
        torch.manual_seed(0)
        encoder = variants.ptuning_v2(backbone, k, device, dtype)
        hidden = backbone.config.get_text_config().hidden_size
        stepper = Stepper(variants.with_loss(encoder, kind, hidden).to(device=device, dtype=dtype), inputs)
        for module in stepper.model.modules():  # no dropout: both variants compute the same step
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        stepper.model(inputs)["loss"].backward()  # warm-up, and the gradient the two must share
        grad_norm = torch.norm(torch.stack([p.grad.float().norm() for p in stepper.trained])).item()
        stepper.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        stepper.step()  # timed without the memory tracker, whose per-operator bookkeeping costs time
        seconds = time.perf_counter() - start
        peak = peak_bytes(stepper.step)
        rows.append(
            CheckpointingRow(
                model, seq_len, batch, k, checkpointing, round(peak / MIB, 1), round(seconds, 2), grad_norm
            )
        )
        del stepper, encoder, backbone
    return rows


def markdown(rows: list[CheckpointingRow], command: str) -> str:
    off, on = rows
    lines = [
        f"# Gradient checkpointing with deep prompts: {off.model}, batch {off.batch} x {off.seq_len} tokens, "
        f"k = {off.k}",
        "",
        f"Command: `{command}`",
        "",
        "| checkpointing | peak step memory (MiB) | step time (s) | prompt gradient norm |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {'on' if row.checkpointing else 'off'} | {row.peak_activation_mib:,.1f} | "
            f"{row.step_seconds:.2f} | {row.prompt_grad_norm:.6g} |"
        )
    lines += [
        "",
        f"Memory with checkpointing / without: {on.peak_activation_mib / off.peak_activation_mib:.3f}; "
        f"step time: {on.step_seconds / off.step_seconds:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


def write(rows: list[CheckpointingRow], output_dir: Path, command: str) -> None:
    write_json_atomic(
        output_dir / "checkpointing.json", {"command": command, "rows": [asdict(r) for r in rows]}
    )
    write_text_atomic(output_dir / "checkpointing.md", markdown(rows, command))
