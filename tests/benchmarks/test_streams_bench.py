"""The streams benchmark: a real ``ptv2 serve`` process for each way of serving, one stream and two at
once, every stream checked against the same request alone, the figures written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptuning_v2.benchmarks.streams import WAYS, run_streams, write


@pytest.fixture(scope="module")
def chat_llama(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("streams_llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_llama_dir)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_streams_at_once_are_timed_and_checked(chat_llama: Path, tmp_path: Path) -> None:
    result = run_streams(str(chat_llama), tokens=6, rounds=1, counts=(1, 2), command="ptv2 bench --streams")
    assert result.wrong == 0
    assert list(result.by_way) == list(WAYS)
    for measured in result.by_way.values():
        assert set(measured) == {1, 2}
        for count in measured.values():
            assert 0 < count["last_first_chunk_s"] <= count["last_end_s"] and count["tokens_per_s"] > 0
    write(result, tmp_path)
    assert json.loads((tmp_path / "streams.json").read_text())["wrong"] == 0
    table = (tmp_path / "streams.md").read_text()
    assert "| 1 at once | 2 at once |" in table and "`ptv2 bench --streams`" in table
    assert all(way in table for way in WAYS)
