"""``ptv2 params``: trainable parameters per method and prompt length, against hand-computed counts."""

from __future__ import annotations

import json

import pytest

from ptuning_v2.cli.main import main

LAYERS, HIDDEN, LABELS = 2, 32, 3
HEAD = HIDDEN * LABELS + LABELS


def report(model_dir, capsys, methods: str, lengths: str) -> dict:
    argv = ["params", str(model_dir), "--method", methods, "--num-virtual-tokens", lengths]
    assert main([*argv, "--num-labels", str(LABELS), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    return {(row["method"], row["num_virtual_tokens"]): row for row in rows}


def test_counts_match_hand_computed_numbers(tiny_bert_dir, capsys) -> None:
    rows = report(tiny_bert_dir, capsys, "ptuning_v2,prompt_tuning,lora,linear_probe,full", "4,16")
    backbone = rows[("full", None)]["backbone_params"]
    expected = {
        ("ptuning_v2", 4): LAYERS * 4 * 2 * HIDDEN,  # a key and a value per layer and virtual token
        ("ptuning_v2", 16): LAYERS * 16 * 2 * HIDDEN,
        ("prompt_tuning", 4): 4 * HIDDEN,  # input embeddings only
        ("prompt_tuning", 16): 16 * HIDDEN,
        ("lora", None): LAYERS * 2 * (8 * HIDDEN + HIDDEN * 8),  # query and value, rank 8
        ("linear_probe", None): 0,
        ("full", None): backbone,
    }
    assert {key: row["trainable"] for key, row in rows.items()} == expected
    for key, row in rows.items():
        adapted = backbone + (0 if key[0] == "full" else row["trainable"])
        assert row["head"] == HEAD
        assert row["trainable_with_head"] == expected[key] + HEAD
        assert row["share_with_head"] == pytest.approx((expected[key] + HEAD) / (adapted + HEAD))
    assert rows[("full", None)]["share"] == 1.0


def test_table_output_and_bad_lengths(tiny_bert_dir, capsys) -> None:
    assert main(["params", str(tiny_bert_dir), "--method", "ptuning_v2", "--num-virtual-tokens", "8"]) == 0
    table = capsys.readouterr().out
    assert "ptuning_v2" in table and f"{LAYERS * 8 * 2 * HIDDEN:,}" in table
    assert main(["params", str(tiny_bert_dir), "--num-virtual-tokens", "8,x"]) == 2
    assert "--num-virtual-tokens" in capsys.readouterr().err
    assert main(["params", str(tiny_bert_dir), "--num-labels", "0"]) == 2
    assert "--num-labels: a classifier has at least 2 classes, got 0" in capsys.readouterr().err
