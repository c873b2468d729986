"""The streams benchmark: a real ``ptv2 serve`` process for each way of serving, one stream and two at
once, every stream checked against the same request alone, the figures written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptuning_v2.benchmarks.streams import REQUEST_LEVEL, run_streams, write


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
    """Two of the ways (streamed by the decode loop, whole from request-level batches), to keep it short."""
    ways = ("decode loop (--decode-batching, --model-threads 1)", REQUEST_LEVEL)
    result = run_streams(str(chat_llama), 6, 1, (1, 2), "ptv2 bench --streams", ways)
    assert result.wrong == 0
    assert tuple(result.by_way) == ways
    for measured in result.by_way.values():
        assert set(measured) == {1, 2}
        for count in measured.values():
            assert 0 < count["last_first_chunk_s"] <= count["last_end_s"] and count["tokens_per_s"] > 0
    request_level = result.by_way[REQUEST_LEVEL][2]
    assert request_level["last_first_chunk_s"] == request_level["last_end_s"]  # answered whole
    write(result, tmp_path)
    assert json.loads((tmp_path / "streams.json").read_text())["wrong"] == 0
    table = (tmp_path / "streams.md").read_text()
    assert "| 1 at once | 2 at once |" in table and "`ptv2 bench --streams`" in table
    assert all(way in table for way in ways)
