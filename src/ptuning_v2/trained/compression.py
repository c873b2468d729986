"""PCA compression of trained deep prompts: each layer's ``[length, width]`` matrix as low-rank factors.

A prompt layer ``P`` is stored as its column mean ``m`` (``[width]``), the top ``r`` principal directions
``C`` (``[r, width]``) and the coefficients ``A = U_r S_r`` (``[length, r]``) of the centred matrix, so
``P ~ A @ C + m``: ``r * (length + width) + width`` numbers instead of ``length * width``. A compressed
checkpoint folder has the usual two files; ``TrainedCheckpoint.read`` expands the factors back to the
dense prompts, so every loader (``ptv2 eval`` / ``predict``, ``load_trained``, prompt transfer) reads it
as is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ptuning_v2.checkpoint import (
    COEFFICIENTS,
    COMPONENTS,
    MEAN,
    WEIGHTS_FILE,
    CheckpointError,
    TrainedCheckpoint,
    checkpoint_bytes,
    reconstruct,
    trainable_state,
    write_checkpoint,
)
from ptuning_v2.config import ConfigError
from ptuning_v2.prompts.deep_prompt import DeepPrompt
from ptuning_v2.trained.model import load_trained
from ptuning_v2.utils.io import write_json_atomic

REPORT_FILE = "compression_report.json"
FORCED_MLP_METHODS = {"prefix_tuning": "ptuning_v2"}
"""Methods whose build always adds the MLP: once folded, their prompts are plain P-Tuning v2 prompts."""


@dataclass
class LayerReport:
    name: str
    length: int
    width: int
    rank: int
    max_rank: int
    explained_variance: float
    """Share of the centred matrix's variance the kept components explain."""
    relative_error: float
    """``||P - A @ C - m||_F / ||P||_F`` of the factors as stored (in the prompt's dtype)."""
    bytes_before: int
    bytes_after: int
    clipped: bool
    """``--rank`` exceeded ``min(length, width)`` for this layer, so the layer kept its full rank."""


def pca_factors(
    matrix: torch.Tensor, rank: int | None, variance: float | None
) -> tuple[dict[str, torch.Tensor], int, float]:
    """The factors of one prompt matrix, the rank kept and the variance it explains.

    ``variance`` picks the smallest rank explaining at least that share of the centred matrix's variance;
    ``rank`` alone fixes it; with both, ``rank`` caps the variance-chosen rank.
    """
    x = matrix.detach().double()
    mean = x.mean(dim=0)
    u, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    energy = s.square()
    total = float(energy.sum())
    cumulative = (energy.cumsum(0) / total).tolist() if total > 0 else [1.0] * len(s)
    limit = len(s)  # min(length, width)
    keep = limit if rank is None else min(rank, limit)
    if variance is not None:
        reached = next((i + 1 for i, share in enumerate(cumulative) if share >= variance - 1e-12), limit)
        keep = min(keep, reached)
    factors = {
        MEAN: mean.to(matrix.dtype),
        COMPONENTS: vh[:keep].to(matrix.dtype).contiguous(),
        COEFFICIENTS: (u[:, :keep] * s[:keep]).to(matrix.dtype).contiguous(),
    }
    return factors, keep, cumulative[keep - 1]


def reconstruction_error(matrix: torch.Tensor, factors: dict[str, torch.Tensor]) -> float:
    dense = reconstruct(factors[COEFFICIENTS], factors[COMPONENTS], factors[MEAN]).double()
    norm = float(matrix.double().norm())
    diff = float((dense - matrix.double()).norm())
    return diff / norm if norm > 0 else diff


def dense_prompts(checkpoint: TrainedCheckpoint) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """The checkpoint's trained tensors with every deep prompt dense (an MLP reparameterisation folded),
    the names of the prompt matrices among them, and whether an MLP was folded."""
    meta = checkpoint.meta
    _, model = load_trained(checkpoint, device="cpu")  # loading folds an MLP reparameterisation
    prompts = [(name, module) for name, module in model.named_modules() if isinstance(module, DeepPrompt)]
    if not prompts:
        raise CheckpointError(
            f"{checkpoint.directory}: holds no deep prompt to compress (method {meta.get('method')!r})"
        )
    folded = bool(meta["run_config"]["prompt"].get("reparameterize")) or meta["method"] in FORCED_MLP_METHODS
    names = [f"{prefix}.prompts.{slot}" for prefix, module in prompts for slot in module.prompts]
    return trainable_state(model), names, folded


def check_request(rank: int | None, variance: float | None) -> None:
    if rank is None and variance is None:
        raise ConfigError("give --rank R and/or --variance V (an explained-variance share, e.g. 0.99)")
    if rank is not None and rank < 1:
        raise ConfigError(f"--rank: must be an integer >= 1, got {rank}")
    if variance is not None and not (0.0 < variance <= 1.0 and math.isfinite(variance)):
        raise ConfigError(f"--variance: must be in (0, 1], got {variance}")


def check_output_dir(checkpoint_dir: Path, output_dir: Path, overwrite: bool) -> None:
    """A new checkpoint folder: not the source, not a file, and not one that holds anything (a checkpoint
    of another run, say) unless ``overwrite``."""
    if output_dir.resolve() == checkpoint_dir.resolve():
        raise ConfigError("--output-dir: must differ from the checkpoint folder (it would be overwritten)")
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {output_dir}: is a file, not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"--output-dir {output_dir}: not empty; pass --overwrite to write the checkpoint over what is "
            "there, or choose another folder"
        )


def compress_checkpoint(
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    rank: int | None = None,
    variance: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the PCA-compressed copy of a checkpoint folder to ``output_dir``; return the report
    (also written to ``output_dir/compression_report.json``)."""
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    check_request(rank, variance)
    checkpoint = TrainedCheckpoint.read(checkpoint_dir)
    meta = checkpoint.meta
    if "compression" in meta:
        raise CheckpointError(
            f"{checkpoint_dir}: already compressed (rank {meta['compression'].get('rank')}); "
            f"expand it first: ptv2 compress {checkpoint_dir} --expand --output-dir DIR"
        )
    check_output_dir(checkpoint_dir, output_dir, overwrite)
    tensors, prompt_names, folded = dense_prompts(checkpoint)
    limits = {name: min(tensors[name].shape) for name in prompt_names}
    if rank is not None and rank > max(limits.values()):
        raise ConfigError(
            f"--rank {rank}: larger than any prompted layer allows (at most min(length, width) = "
            f"{max(limits.values())})"
        )
    stored: dict[str, torch.Tensor] = {}
    layers = []
    for name, tensor in tensors.items():
        if name not in limits:  # the task head and anything else trained: copied as is
            stored[name] = tensor
            continue
        factors, kept, explained = pca_factors(tensor, rank, variance)
        stored.update({f"{name}.{part}": t for part, t in factors.items()})
        itemsize = tensor.element_size()
        layers.append(
            LayerReport(
                name=name,
                length=tensor.shape[0],
                width=tensor.shape[1],
                rank=kept,
                max_rank=limits[name],
                explained_variance=round(explained, 6),
                relative_error=reconstruction_error(tensor, factors),
                bytes_before=tensor.numel() * itemsize,
                bytes_after=sum(t.numel() for t in factors.values()) * itemsize,
                clipped=rank is not None and rank > limits[name],
            )
        )
    run_config = dict(meta["run_config"])
    run_config["prompt"] = {**run_config["prompt"], "reparameterize": False}
    run_config["method"] = FORCED_MLP_METHODS.get(run_config["method"], run_config["method"])
    compression = {
        "method": "pca",
        "rank": rank,
        "variance": variance,
        "source": str(checkpoint_dir),
        "source_method": meta["method"],
        "folded_mlp": folded,
        "dense_parameters": int(sum(t.numel() for t in tensors.values())),
        "layers": {
            r.name: {
                "rank": r.rank,
                "relative_error": r.relative_error,
                "explained_variance": r.explained_variance,
            }
            for r in layers
        },
    }
    write_derived(output_dir, stored, meta, run_config, compression=compression)
    report = {
        "checkpoint": str(checkpoint_dir),
        "output": str(output_dir),
        "rank": rank,
        "variance": variance,
        "folded_mlp": folded,
        "layers": [asdict(r) for r in layers],
        "prompt_bytes_before": sum(r.bytes_before for r in layers),
        "prompt_bytes_after": sum(r.bytes_after for r in layers),
        "adapter_bytes_before": (checkpoint_dir / WEIGHTS_FILE).stat().st_size,
        "adapter_bytes_after": (output_dir / WEIGHTS_FILE).stat().st_size,
        "checkpoint_bytes_before": checkpoint_bytes(checkpoint_dir),
        "checkpoint_bytes_after": checkpoint_bytes(output_dir),
        "max_relative_error": max(r.relative_error for r in layers),
    }
    write_json_atomic(output_dir / REPORT_FILE, report)
    return report


def expand_checkpoint(checkpoint_dir: str | Path, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the dense checkpoint a compressed one stands for (to compress it again at another rank)."""
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    checkpoint = TrainedCheckpoint.read(checkpoint_dir)  # its tensors expanded to dense on reading
    meta = checkpoint.meta
    if "compression" not in meta:
        raise CheckpointError(f"{checkpoint_dir}: not a compressed checkpoint (nothing to expand)")
    check_output_dir(checkpoint_dir, output_dir, overwrite)
    write_derived(output_dir, checkpoint.tensors, meta, meta["run_config"], expanded_from=meta["compression"])
    return output_dir


def write_derived(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    run_config: dict[str, Any],
    **extra: Any,
) -> None:
    """A checkpoint made from another: the source's JSON (less its own compression record) with new
    tensors, the given run config and extra keys."""
    kept = {k: v for k, v in meta.items() if k not in ("compression", "expanded_from")}
    write_checkpoint(
        directory, tensors, {**kept, "method": run_config["method"], "run_config": run_config}, **extra
    )


def format_report(report: dict[str, Any]) -> str:
    """The per-layer table ``ptv2 compress`` prints."""
    width = max(len("layer"), *(len(r["name"]) for r in report["layers"]))
    lines = [
        f"{'layer':{width}} {'shape':>10} {'rank':>5} {'expl.var':>9} {'rel.error':>10} "
        f"{'bytes before':>13} {'bytes after':>12}"
    ]
    for r in report["layers"]:
        note = f" (clipped to min(length, width) = {r['max_rank']})" if r["clipped"] else ""
        lines.append(
            f"{r['name']:{width}} {str(r['length']) + 'x' + str(r['width']):>10} {r['rank']:5d} {r['explained_variance']:9.4f} "
            f"{r['relative_error']:10.2e} {r['bytes_before']:13,d} {r['bytes_after']:12,d}{note}"
        )
    before, after = report["checkpoint_bytes_before"], report["checkpoint_bytes_after"]
    lines.append(
        f"prompts {report['prompt_bytes_before']:,d} -> {report['prompt_bytes_after']:,d} bytes; checkpoint "
        f"files {before:,d} -> {after:,d} bytes ({after / before:.1%}); largest relative error "
        f"{report['max_relative_error']:.2e}"
    )
    if report["folded_mlp"]:
        lines.append("(the MLP reparameterisation was folded into plain prompts first)")
    return "\n".join(lines)
