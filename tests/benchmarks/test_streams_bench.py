"""The streams benchmark: two real ``ptv2 serve`` processes (one and two model threads), streams alone and
two at once, every stream at once checked against the same request alone, the figures written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptuning_v2.benchmarks.streams import run_streams, write


@pytest.fixture(scope="module")
def chat_llama(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("streams_llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_llama_dir)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_two_streams_at_once_are_timed_and_checked(chat_llama: Path, tmp_path: Path) -> None:
    result = run_streams(str(chat_llama), tokens=6, rounds=1, command="ptv2 bench --streams")
    assert result.wrong == 0
    assert set(result.by_model_threads) == {1, 2}
    for measured in result.by_model_threads.values():
        together = measured["together"]
        assert (
            0 < together["earlier_first_chunk_s"] <= together["later_first_chunk_s"] <= together["both_end_s"]
        )
        assert 0 < measured["alone"]["first_chunk_s"] <= measured["alone"]["end_s"]
    write(result, tmp_path)
    assert json.loads((tmp_path / "streams.json").read_text())["wrong"] == 0
    table = (tmp_path / "streams.md").read_text()
    assert "| 1 |" in table and "| 2 |" in table and "`ptv2 bench --streams`" in table
