"""The streams benchmark: a real ``ptv2 serve`` process for each way of serving, one stream and two at
once, every stream checked against the same request alone, the figures written."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptuning_v2.benchmarks import streams
from ptuning_v2.benchmarks.streams import REQUEST_LEVEL, StreamTiming, run_streams, write


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


def test_spread_arrivals_are_sent_one_gap_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a gap, job i is sent i gaps after the round starts; tokens per second run from the first
    request to the last end."""
    sent: list[float] = []

    def answer(url: str, task: str, question: str, tokens: int) -> StreamTiming:
        sent.append(time.perf_counter())
        time.sleep(0.05)
        return StreamTiming(0.01, 0.05, question)

    monkeypatch.setattr(streams, "stream", answer)
    jobs = [("a", "q0"), ("b", "q1"), ("a", "q2")]
    measured, wrong = streams.measure_server("http://x", jobs, (3,), 4, 1, answer, gap_s=0.2)
    assert wrong == 0
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent[3:])]  # after the three alone
    assert all(0.18 < gap < 0.6 for gap in gaps)  # never early; late only by what a busy machine adds
    assert measured[3]["last_end_s"] == 0.05 and measured[3]["last_first_chunk_s"] == 0.01
    assert 3 * 4 / 1.5 < measured[3]["tokens_per_s"] < 3 * 4 / 0.43  # 12 tokens over 0.4 s + 0.05 s, or more
