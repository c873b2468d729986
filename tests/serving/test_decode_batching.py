"""The decode loop's choices that the live tests (test_openai_api.py, both ways) do not reach: which
settings it reproduces, the defaults it takes as ``generate()`` does, its processors, and left padding."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, TopKLogitsWarper, TopPLogitsWarper

from ptuning_v2.serving.decode_batching import effective, left_pad, loop_reproduces, processors

GREEDY = {"max_new_tokens": 8, "pad_token_id": 0, "eos_token_id": 1, "do_sample": False}


@pytest.mark.parametrize(
    "options, model_config, reproduced",
    [
        (GREEDY, {}, True),
        ({**GREEDY, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "min_new_tokens": 2}, {}, True),
        ({**GREEDY, "num_beams": 3}, {}, False),
        ({**GREEDY, "repetition_penalty": 1.2}, {}, False),
        (GREEDY, {"repetition_penalty": 1.3}, False),
        (GREEDY, {"no_repeat_ngram_size": 3}, False),
        (GREEDY, {"repetition_penalty": 1.0, "temperature": 0.6}, True),
    ],
)
def test_what_the_loop_reproduces(options, model_config, reproduced) -> None:
    assert loop_reproduces(options, GenerationConfig(**model_config)) is reproduced


def test_left_out_settings_come_from_the_backbone_then_transformers() -> None:
    """As generate(): the backbone's generation_config first, then transformers' defaults (top_k 50)."""
    chosen = effective({**GREEDY, "do_sample": True}, GenerationConfig(temperature=0.6))
    assert chosen["temperature"] == 0.6 and chosen["top_k"] == 50 and chosen["top_p"] == 1.0
    assert effective({**GREEDY, "temperature": 0.9}, GenerationConfig(temperature=0.6))["temperature"] == 0.9


def test_processors_in_generates_order() -> None:
    sampled = effective({**GREEDY, "do_sample": True, "top_p": 0.9}, GenerationConfig())
    chain = processors(sampled, prompt_length=5, device=torch.device("cpu"))
    assert [type(p) for p in chain] == [TopKLogitsWarper, TopPLogitsWarper]  # temperature 1.0: none
    assert list(processors(effective(GREEDY, GenerationConfig()), 5, torch.device("cpu"))) == []


def test_left_pad_puts_zeros_in_front() -> None:
    keys = torch.ones(1, 2, 3, 4)
    padded = left_pad(keys, 5)
    assert padded.shape == (1, 2, 5, 4) and padded[:, :, :2].eq(0).all() and padded[:, :, 2:].eq(1).all()
    assert left_pad(keys, 3) is keys
    assert left_pad(torch.ones(2, 3), 4, dim=1).tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]
