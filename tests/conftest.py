"""Shared fixtures: tiny random models saved as real model folders, loadable by path like any model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    DebertaV2Config,
    DebertaV2Model,
    LlamaConfig,
    LlamaForCausalLM,
    MPNetConfig,
    MPNetModel,
    T5Config,
    T5ForConditionalGeneration,
)

# Tiny models run fastest on one thread; more threads only add contention on a 2-core machine.
torch.set_num_threads(1)

# Shared helpers are plain modules in tests/ (pyproject: pythonpath); their asserts explain failures too.
pytest.register_assert_rewrite("serving_checks")

WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "not",
    "no",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "good",
    "bad",
    "great",
    "awful",
    "fine",
    "terrible",
    "movie",
    "film",
    "story",
    "plot",
    "actor",
    "actress",
    "scene",
    "music",
    "boring",
    "fun",
    "funny",
    "sad",
    "happy",
    "love",
    "hate",
    "like",
    "dislike",
    "best",
    "worst",
    "very",
    "really",
    "quite",
    "too",
    "so",
    "it",
    "this",
    "that",
    "these",
    "those",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "my",
    "your",
    "his",
    "her",
    "our",
    "their",
    "what",
    "who",
    "where",
    "when",
    "why",
    "how",
    "which",
    "paris",
    "london",
    "berlin",
    "john",
    "mary",
    "acme",
    "corp",
    "city",
    "river",
    "country",
    "of",
    "in",
    "on",
    "at",
    "to",
    "from",
    "with",
    "by",
    "for",
    "about",
    "as",
    "into",
    "over",
    "after",
    "before",
    "during",
    "between",
    "through",
]


def make_tokenizer(directory: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over a small English vocabulary (real tokenization, tiny embedding matrix)."""
    directory.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
        "##" + chr(c) for c in range(ord("a"), ord("z") + 1)
    ]
    punctuation = list(".,!?'\"-:;()0123456789")
    vocab = special + sorted(set(WORDS)) + letters + punctuation
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(str(directory / "vocab.txt"), do_lower_case=True)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with a pooler and a matching tokenizer, as a model folder."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_deberta_v2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer DeBERTa-v3-style model (relative attention with buckets, shared position keys) and the
    tiny BERT's tokenizer, as a model folder; its attention is its own code."""
    directory = tmp_path_factory.mktemp("tiny_deberta_v2")
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, relative_attention=True,
        pos_att_type=["p2c", "c2p"], position_buckets=16, share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    DebertaV2Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer MPNet (relative position bias) and the tiny BERT's tokenizer, as a model folder."""
    directory = tmp_path_factory.mktemp("tiny_mpnet")
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    MPNetModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with grouped-query attention (4 heads, 2 kv heads) and a tokenizer, as a folder."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = make_tokenizer(directory)
    tokenizer.eos_token = "[SEP]"
    tokenizer.bos_token = "[CLS]"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_t5_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer T5 with the tiny Llama's tokenizer; weights at 5x the usual scale, so a prompt moves outputs."""
    directory = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        initializer_factor=5.0,
    )  # fmt: skip
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture()
def sentiment_csvs(tmp_path: Path) -> dict[str, Path]:
    """Tiny train/dev/test CSV files with a learnable signal (good/great vs bad/awful)."""
    import random

    rng = random.Random(0)
    positive, negative = ["good", "great", "fun", "best"], ["bad", "awful", "boring", "worst"]
    fillers = ["the movie was", "this film is", "the story is", "what a", "i think it is"]
    files = {}
    for split, n in (("train", 64), ("validation", 24), ("test", 24)):
        lines = ["review,sentiment"]
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            word = rng.choice(positive if label == "pos" else negative)
            lines.append(f"{rng.choice(fillers)} {word},{label}")
        files[split] = tmp_path / f"{split}.csv"
        files[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return files
