"""Fixtures of the multi-process training tests (FSDP, DeepSpeed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel


@pytest.fixture(scope="module")
def dropout_free_bert(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout, so two runs can agree to float round-off."""
    directory = tmp_path_factory.mktemp("bert_no_dropout")
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(
        tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(directory)
    return directory
