"""Prompt transfer: start a prompt from another run's trained prompt on the same backbone.

The P-Tuning v2 paper seeds sequence-labelling prompts with prompts pre-trained on several tasks;
here any trained checkpoint folder (a single-task run, or one task of a multi-task run) can seed a
new run. Layers are matched by slot name; each is tiled or cut to the new prompt's length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ptuning_v2.checkpoint import CheckpointError, TrainedCheckpoint
from ptuning_v2.config import DeepPromptConfig


def checkpoint_prompts(
    checkpoint: TrainedCheckpoint,
    fingerprint: str,
    build_prompt: Callable[[DeepPromptConfig], torch.nn.Module],
) -> dict[str, torch.Tensor]:
    """The per-layer prompt matrices ``[length, width]`` stored in a checkpoint, by slot name.

    ``build_prompt`` makes an empty ``DeepPrompt`` for a config on this backbone: a checkpoint trained
    with the MLP reparameterisation stores the MLP, and its prompts are what the MLP produces.
    """
    checkpoint.check_fingerprint(fingerprint)
    source = checkpoint.run_config.get("prompt") or {}
    tensors = checkpoint.tensors
    prefix = next((k[: k.index("prompt.") + len("prompt.")] for k in tensors if ".prompt." in f".{k}"), None)
    if prefix is None:
        raise CheckpointError(
            f"{checkpoint.directory}: holds no deep prompt (method {checkpoint.meta.get('method')!r})"
        )
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    config = DeepPromptConfig.from_dict({**source, "init": "random", "init_checkpoint": None})
    if not config.reparameterize:
        return {k.removeprefix("prompts."): v for k, v in own.items() if k.startswith("prompts.")}
    prompt = build_prompt(config)
    prompt.load_state_dict(own)
    with torch.no_grad():
        return {name: t.detach().clone() for name, t in prompt.raw().items()}


def fit_length(prompt: torch.Tensor, length: int) -> torch.Tensor:
    """Tile a ``[n, width]`` prompt to ``length`` rows, or keep its first ``length`` rows."""
    reps = -(-length // prompt.shape[0])
    return prompt.repeat(reps, 1)[:length]


def transferred(
    source: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], where: str
) -> dict[str, torch.Tensor]:
    """The source prompts fitted to ``shapes``; a prompted layer the source lacks is an error."""
    missing = sorted(set(shapes) - set(source), key=lambda n: (n.rsplit("_", 1)[0], int(n.rsplit("_", 1)[1])))
    if missing:
        raise CheckpointError(
            f"{where}: the checkpoint has no prompt for layer(s) {missing} (it prompts {sorted(source)}); "
            "prompt the same layers, or start those from random"
        )
    out = {}
    for name, (length, width) in shapes.items():
        if source[name].shape[-1] != width:
            raise CheckpointError(
                f"{where}: prompt {name} has width {source[name].shape[-1]}, this model needs {width}"
            )
        out[name] = fit_length(source[name], length)
    return out
