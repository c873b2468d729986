"""A frozen backbone with deep prompts: the backbone's own forward, the prompts passed along with it."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ptuning_v2.checkpoint import TrainedCheckpoint
from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.injection import INJECTORS
from ptuning_v2.injection.attention import PROMPTS_KWARG
from ptuning_v2.prompts.deep_prompt import DeepPrompt, filled_later


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, as ``generate()`` makes them: with left padding the
    real tokens still sit at 0..n-1 (a prefix with no position makes absolute positions matter)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def decoder_positions(inputs: dict[str, Any], offset: int | torch.Tensor) -> dict[str, Any]:
    """A decoder-only model's inputs with position ids of the real tokens (from the mask unless given),
    shifted by ``offset`` (one number, or one per row of a mixed-task batch)."""
    positions = inputs.get("position_ids")
    if positions is None:
        mask = inputs.get("attention_mask")
        if mask is None and not torch.as_tensor(offset).any():
            return inputs  # the backbone's own positions are already 0..n-1
        tokens = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
        if mask is None:
            cache = inputs.get("cache", inputs.get("past_key_values"))
            past = cache.get_seq_length() if cache is not None else 0
            mask = torch.ones(tokens.shape[0], past + tokens.shape[1], device=tokens.device)
        positions = mask_positions(mask)[:, -tokens.shape[1] :]
    if isinstance(offset, torch.Tensor):
        offset = offset.to(positions.device).view(-1, 1)
    return {**inputs, "position_ids": positions + offset}


class DeepPromptModel(nn.Module):
    """Wraps a transformers model; call it exactly as the model (``forward`` and ``generate``).

    The backbone is frozen here; only ``self.prompt`` holds trainable parameters. ``remove()`` gives
    the backbone back exactly as it was (attention, hooks, trainable flags).
    """

    def __init__(
        self,
        backbone: nn.Module,
        config: DeepPromptConfig,
        tokenizer: Any = None,
        backbone_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt_config = config
        self.backbone_dropout = backbone_dropout
        if "_ptv2_requires_grad" not in vars(backbone):  # the first wrapper keeps the flags to restore
            backbone._ptv2_requires_grad = {name: p.requires_grad for name, p in backbone.named_parameters()}
            for param in backbone.parameters():  # later ones find it frozen: a server adds tasks all the time
                param.requires_grad_(False)
        self.injector = INJECTORS[config.mode](backbone, config.attach_to)
        shapes = self.prompt_shapes(config)
        self.prompt = DeepPrompt(config, shapes, self.hidden_size)
        # Decoder-only language models get position ids from the mask (plus the optional offset).
        self.decoder_only = (
            backbone.can_generate()
            and not getattr(backbone.config, "is_encoder_decoder", False)
            and "position_ids" in inspect.signature(backbone.forward).parameters
        )
        if config.position_offset == "prefix" and not self.decoder_only:
            raise ValueError("prompt.position_offset 'prefix' applies to decoder-only language models only")
        longest = max((n for n, _ in shapes.values()), default=0)
        self.position_offset = longest if config.position_offset == "prefix" else 0
        if filled_later():  # a checkpoint's prompts come next
            return
        if config.init == "text":
            self.init_from_text(config.init_text or "", tokenizer)
        elif config.init == "checkpoint":
            self.init_from_checkpoint(config.init_checkpoint or "")

    @property
    def hidden_size(self) -> int:
        config = self.backbone.config
        return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size

    def prompt_shapes(self, config: DeepPromptConfig) -> dict[str, tuple[int, int]]:
        """``[length, width]`` of each prompted slot under ``config`` (layers numbered within each kind)."""
        shapes: dict[str, tuple[int, int]] = {}
        widths = self.injector.widths()
        for kind in ("self", "decoder_self", "cross"):
            kind_slots = [slot for slot in self.injector.slots if slot.kind == kind]
            lengths = config.lengths(len(kind_slots)) if kind_slots else {}
            for slot in kind_slots:
                if slot.layer in lengths:
                    shapes[slot.name] = (lengths[slot.layer], widths[slot.name])
        return shapes

    def init_from_checkpoint(self, directory: str) -> None:
        """Start from a trained checkpoint's prompts (same backbone), each tiled or cut to length."""
        from ptuning_v2.models import backbone_fingerprint
        from ptuning_v2.prompts.transfer import checkpoint_prompts, transferred

        source = checkpoint_prompts(
            TrainedCheckpoint.read(directory),
            backbone_fingerprint(self.backbone),
            lambda config: DeepPrompt(config, self.prompt_shapes(config), self.hidden_size),
        )
        self.prompt.load_prompts(transferred(source, self.prompt.shapes, directory))

    @property
    def config(self) -> Any:
        """The backbone's config, so task heads treat prompted and plain backbones alike."""
        return self.backbone.config

    def init_from_text(self, text: str, tokenizer: Any) -> None:
        """Start each layer's prompt from the keys/values (or hidden states) that ``text`` produces."""
        if tokenizer is None:
            raise ValueError("prompt.init 'text' needs the backbone's tokenizer")
        device = next(self.backbone.parameters()).device
        inputs = dict(tokenizer(text, return_tensors="pt").to(device))
        if getattr(self.backbone.config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = inputs["input_ids"]
        was_training = self.backbone.training
        self.backbone.eval()
        states = self.injector.capture(inputs)
        self.backbone.train(was_training)
        self.prompt.init_from(states)

    def with_positions(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Decoder-only models: position ids of the real tokens (from the mask unless given), shifted by
        ``position_offset``; other models: ``inputs`` unchanged."""
        return decoder_positions(inputs, self.position_offset) if self.decoder_only else inputs

    def train(self, mode: bool = True) -> DeepPromptModel:
        """Training mode; with ``backbone_dropout=False`` the frozen backbone computes as in evaluation
        (no dropout), except that checkpointed layers keep their training flag, which turns the
        recompute on (their dropout lives in submodules, which are off)."""
        super().train(mode)
        if mode and not self.backbone_dropout:
            for module in self.backbone.modules():
                if not getattr(module, "gradient_checkpointing", False):
                    module.training = False
        return self

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Recompute the backbone's layers in the backward pass (the prompts travel with each call, so
        the recompute sees them). transformers' default non-reentrant checkpointing is required."""
        self.backbone.activation_checkpointing_enable(**kwargs)
        check_checkpointing(self.backbone)

    def remove(self) -> nn.Module:
        """Take the prompts out; once no prompted model is left on the backbone, its attention, hooks and
        trainable flags are as they were before the first one."""
        self.injector.remove()
        if not getattr(self.backbone, "_ptv2_installs", 0):
            flags = vars(self.backbone).pop("_ptv2_requires_grad")
            for name, param in self.backbone.named_parameters():
                param.requires_grad_(flags[name])
        return self.backbone

    def forward(self, **inputs: Any) -> Any:
        if torch.is_grad_enabled():  # a backward pass may follow
            check_checkpointing(self.backbone)
        delivery = self.injector.deliver(self.prompt())
        return self.backbone(**self.with_positions(inputs), **{PROMPTS_KWARG: delivery})

    @torch.no_grad()
    def generate(self, **kwargs: Any) -> Any:
        delivery = self.injector.deliver(self.prompt())
        return self.backbone.generate(**self.with_positions(kwargs), **{PROMPTS_KWARG: delivery})


def check_checkpointing(backbone: nn.Module) -> None:
    """Reentrant checkpointing passes only positional tensors through autograd: the prompts, which
    arrive as a keyword argument, would get no gradient. Refuse it rather than train nothing."""
    if not backbone.is_activation_checkpointing:
        return
    for module in backbone.modules():
        function = getattr(module, "_gradient_checkpointing_func", None)
        reentrant = getattr(function, "keywords", {}).get("use_reentrant", False)
        if getattr(module, "gradient_checkpointing", False) and reentrant:
            raise ValueError(
                "reentrant gradient checkpointing would give deep prompts no gradient: enable it with "
                "use_reentrant=False (transformers' default)"
            )
