"""``ptv2 suggest-config``: a valid starting config that follows the prompt-length guidance."""

from __future__ import annotations

import pytest
import yaml
from transformers import LlamaConfig

from ptuning_v2.cli.commands.suggest_config import GUIDANCE
from ptuning_v2.cli.main import main
from ptuning_v2.methods import get_method, load_run_config
from ptuning_v2.tasks import TASKS


def suggested(capsys, tmp_path, *argv: str):
    assert main(["suggest-config", *argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Starting point") and "not a tuned config" in out
    path = tmp_path / "suggested.yaml"
    path.write_text(out, encoding="utf-8")
    return load_run_config(path), yaml.safe_load(out)


@pytest.mark.parametrize("task", sorted(set(GUIDANCE) & set(TASKS)))
def test_every_task_gets_a_valid_config_with_its_prompt_length(tiny_bert_dir, capsys, tmp_path, task) -> None:
    config, raw = suggested(capsys, tmp_path, "--task", task, "--model", str(tiny_bert_dir))
    assert (config.task, config.method, config.model) == (task, "ptuning_v2", str(tiny_bert_dir))
    swept = get_method("ptuning_v2").task_defaults.get(task, {})  # the sweeps' numbers, where there are
    assert config.prompt.num_virtual_tokens == swept.get(
        "prompt.num_virtual_tokens", GUIDANCE[task].prompt_length
    )
    assert config.train.lr == swept.get("train.lr", GUIDANCE[task].lr)
    assert raw["data"]  # a built-in data set or file placeholders


def test_sequence_labelling_gets_longer_prompts_than_classification() -> None:
    assert GUIDANCE["ner"].prompt_length >= 4 * GUIDANCE["classification"].prompt_length
    assert GUIDANCE["classification"].prompt_length < 20


def test_very_large_models_get_shorter_prompts(capsys, tmp_path) -> None:
    big = tmp_path / "big"
    LlamaConfig(hidden_size=8192, num_hidden_layers=80, vocab_size=32000).save_pretrained(big)
    config, _ = suggested(capsys, tmp_path, "--task", "classification", "--model", str(big))
    assert config.prompt.num_virtual_tokens == 32 // 4  # P-Tuning v2's swept classification length, quartered


def test_swept_defaults_replace_the_guidance_for_ptuning_v2_only(tiny_bert_dir, capsys, tmp_path) -> None:
    config, _ = suggested(capsys, tmp_path, "--task", "ner", "--model", str(tiny_bert_dir))
    assert (config.train.lr, config.train.head_lr, config.prompt.num_virtual_tokens) == (5e-2, 5e-3, 32)
    other, _ = suggested(
        capsys, tmp_path, "--task", "ner", "--model", str(tiny_bert_dir), "--method", "prompt_tuning"
    )
    assert (other.train.lr, other.prompt.num_virtual_tokens) == (1e-2, GUIDANCE["ner"].prompt_length)


def test_other_methods_keep_their_own_learning_rates(tiny_bert_dir, capsys, tmp_path) -> None:
    config, raw = suggested(
        capsys, tmp_path, "--task", "classification", "--model", str(tiny_bert_dir), "--method", "full"
    )
    assert config.train.lr == 2e-5 and "prompt" not in raw


def test_unknown_task_is_a_clear_error(tiny_bert_dir, capsys) -> None:
    assert main(["suggest-config", "--task", "poetry", "--model", str(tiny_bert_dir)]) == 2
    assert "poetry" in capsys.readouterr().err


def test_a_single_small_model_task_is_pointed_at_lora(tiny_bert_dir, capsys) -> None:
    assert main(["suggest-config", "--task", "classification", "--model", str(tiny_bert_dir)]) == 0
    assert "LoRA matched or beat P-Tuning v2" in capsys.readouterr().out
    assert main(["suggest-config", "--task", "qa", "--model", str(tiny_bert_dir)]) == 0
    assert "LoRA" not in capsys.readouterr().out  # not measured on QA: no claim


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_generation_gets_its_built_in_data_and_no_head_rate(tiny_bert_dir, capsys, tmp_path, task) -> None:
    _, raw = suggested(capsys, tmp_path, "--task", task, "--model", str(tiny_bert_dir))
    assert raw["data"] == {"name": "aclsum"} and "head_lr" not in raw["train"]
