"""The models a benchmark compares, each built from a freshly loaded backbone the way users build it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptuning_v2.config import DeepPromptConfig, RunConfig
from ptuning_v2.methods import get_method
from ptuning_v2.models import BackboneKind, load_backbone
from ptuning_v2.prompts.model import DeepPromptModel
from ptuning_v2.tasks.classification import ClassificationModel

PEFT_TASK_TYPES = {"encoder": "FEATURE_EXTRACTION", "causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def backbone(name: str, kind: BackboneKind, device: torch.device, dtype: torch.dtype) -> nn.Module:
    return load_backbone(name, kind, dtype=dtype).to(device)


def ptuning_v2(model: nn.Module, k: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """P-Tuning v2 with ``k`` prefix tokens per layer (random init: values do not change the cost);
    ``k = 0`` measures the wrapper alone, which a run config refuses as a method."""
    return DeepPromptModel(model, DeepPromptConfig(num_virtual_tokens=k)).to(device=device, dtype=dtype)


def peft_prefix(
    model: nn.Module, kind: BackboneKind, k: int, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """PEFT's prefix tuning (prefixes passed as a KV cache), without the MLP, as P-Tuning v2 has none."""
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(task_type=PEFT_TASK_TYPES[kind], num_virtual_tokens=k)
    peft_model = get_peft_model(model, config).to(device=device, dtype=dtype)
    if k and kind == "encoder":
        check_prefix_reaches_attention(peft_model, device)
    return peft_model


def check_prefix_reaches_attention(peft_model: nn.Module, device: torch.device) -> None:
    """Models whose ``forward`` drops ``past_key_values`` unread (MPNet) run PEFT's prefix as the plain
    model: timing that would be timing the plain model, so it is refused like a failure."""
    ids = torch.full((1, 4), 5, dtype=torch.long, device=device)
    base = peft_model.get_base_model()
    with torch.no_grad():
        prefixed, plain = peft_model(input_ids=ids), base(input_ids=ids)
    if torch.equal(prefixed.last_hidden_state, plain.last_hidden_state):
        raise ValueError(
            f"PEFT's prefix has no effect on {type(base).__name__}: its forward drops past_key_values"
        )


def peft_sequence_classification_error(name: str) -> str | None:
    """Whether PEFT's prefix tuning runs on ``name`` as a sequence classifier (its route for encoders).

    Returns the error it raises, or None when a forward and backward pass work.
    """
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from ptuning_v2.models import resolve_model

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name), num_labels=2)
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    ids = torch.full((1, 8), 5, dtype=torch.long)
    try:
        out = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0]))
        out.loss.backward()
    except Exception as exc:  # the point is to record whatever PEFT raises
        return f"{type(exc).__name__}: {exc}"
    return None


def lora(model: nn.Module) -> nn.Module:
    return get_method("lora").build(model, RunConfig(), None)


def full(model: nn.Module) -> nn.Module:
    return get_method("full").build(model, RunConfig(), None)


class LanguageModelLoss(nn.Module):
    """Next-token loss over the batch itself, so every language-model variant trains on the same batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": self.model(**batch, labels=batch["input_ids"]).loss}


def with_loss(encoder: nn.Module, kind: BackboneKind, hidden_size: int) -> nn.Module:
    """The trained model: encoders get the classification head of the classification task."""
    if kind == "encoder":
        return ClassificationModel(encoder, hidden_size, num_labels=2, pooling="cls", dropout=0.1)
    return LanguageModelLoss(encoder)


def vocab_size(name: str) -> int:
    from transformers import AutoConfig

    from ptuning_v2.models import resolve_model

    return AutoConfig.from_pretrained(resolve_model(name)).get_text_config().vocab_size


def random_inputs(
    vocab: int, batch: int, seq_len: int, device: torch.device, seed: int, labels: bool = False
) -> dict[str, Any]:
    """Random token ids (no padding) from the vocabulary; ``labels`` adds two-class labels."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(100, vocab - 1), vocab, (batch, seq_len), generator=generator)
    inputs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    if labels:
        inputs["labels"] = torch.randint(0, 2, (batch,), generator=generator).to(device)
    return inputs
