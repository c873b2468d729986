"""Backbone and tokenizer loading: aliases, local folders, hub names, and backbone fingerprints."""

from ptuning_v2.models.loading import (
    MODEL_ALIASES,
    BackboneKind,
    ModelAlias,
    ModelLoadError,
    backbone_fingerprint,
    convert_gguf,
    load_backbone,
    load_tokenizer,
    resolve_model,
)

__all__ = [
    "MODEL_ALIASES",
    "BackboneKind",
    "ModelAlias",
    "ModelLoadError",
    "backbone_fingerprint",
    "convert_gguf",
    "load_backbone",
    "load_tokenizer",
    "resolve_model",
]
