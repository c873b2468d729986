"""``ptv2 recommend``: every rule of docs/recommend.md, and a config that ``ptv2 train`` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ptuning_v2.cli.commands.recommend import choose, parse_count
from ptuning_v2.cli.commands.suggest_config import GUIDANCE
from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError
from ptuning_v2.methods import load_run_config


def recommend(capsys: pytest.CaptureFixture, tmp_path: Path, *argv: str) -> tuple[str, object]:
    """The printed text, and the config it holds loaded as ``ptv2 train`` would load it."""
    assert main(["recommend", *argv]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "recommended.yaml"
    path.write_text(out, encoding="utf-8")
    return out, load_run_config(path)


@pytest.mark.parametrize(
    ("task", "params", "examples", "tasks", "memory", "method", "rule", "because"),
    [
        ("classification", 11e9, 50_000, 1, 80, "prompt_tuning", "R1", "at 10B, not below"),
        ("multiple_choice", 20e9, 500, 4, 200, "prompt_tuning", "R1", "fewest trained values"),
        ("classification", 350e6, 50_000, 3, 80, "ptuning_v2", "R2", "3 tasks on one backbone"),
        ("ner", 20e9, 50_000, 2, 200, "ptuning_v2", "R2", "one model copy per task"),  # not R1: NER
        ("ner", 22e6, 14_041, 1, 16, "full", "R3", "CoNLL-2003 test F1 0.8671 vs 0.8376"),
        ("qa", 3e9, 80_000, 1, 80, "ptuning_v2", "R4", "instead of a 12 GB model copy"),
        ("classification", 22e6, 2_000, 1, 16, "lora", "R5", "2,000 labelled examples are few"),
        ("classification", 350e6, 50_000, 1, 4, "lora", "R5", "needs about 7.0 GB"),
    ],
)
def test_each_rule_picks_its_method(
    task: str, params: float, examples: int, tasks: int, memory: float, method: str, rule: str, because: str
) -> None:
    rec = choose(task, params, examples, tasks, memory)
    assert (rec.method, rec.rule) == (method, rule)
    assert any(because in reason for reason in rec.reasons), rec.reasons
    assert ("Not prompt_tuning" in rec.reasons[-1]) == (task in ("ner", "qa"))


def test_boundaries_between_rules() -> None:
    assert choose("classification", 9.9e9, 50_000, 1, 400).rule == "R4"  # just under 10B
    assert choose("classification", 0.99e9, 5_000, 1, 20).rule == "R3"  # 5,000 examples, 19.8 GB fit
    assert choose("classification", 0.99e9, 4_999, 1, 20).rule == "R5"
    assert choose("classification", 0.99e9, 5_000, 1, 19).rule == "R5"  # full needs 19.8 GB


def test_a_model_that_does_not_fit_even_frozen_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=r"needs about 42.0 GB even frozen"):
        choose("qa", 7e9, 80_000, 1, 8)
    argv = ["--task", "qa", "--model-params", "7B", "--train-examples", "80000", "--memory-gb", "8"]
    assert main(["recommend", *argv]) == 2
    assert capsys.readouterr().err.startswith("ptv2 recommend: error: --memory-gb 8: a 7B-parameter model")


def test_printed_config_uses_suggest_configs_numbers(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = ["--task", "ner", "--model-params", "3B", "--train-examples", "14041", "--memory-gb", "80"]
    out, config = recommend(capsys, tmp_path, *argv, "--num-tasks", "2", "--model", "minilm")
    assert out.startswith("# Recommended method: ptuning_v2 (rule R2 in docs/recommend.md)\n# - 2 tasks")
    assert max(len(line) for line in out.splitlines() if line.startswith("# - ")) <= 100  # wrapped reasons
    guide = GUIDANCE["ner"]
    assert (config.model, config.task, config.method) == ("minilm", "ner", "ptuning_v2")
    assert config.prompt.num_virtual_tokens == guide.prompt_length // 2  # 1B-10B: halved, as suggest-config
    assert (config.train.lr, config.train.epochs, config.train.batch_size) == (guide.lr, 20, 32)
    assert config.train.eval_every == 439 * 20 // 10  # ceil(14,041 / 32) = 439 steps an epoch
    assert config.data.train == "train.jsonl"

    out, config = recommend(
        capsys,
        tmp_path,
        "--task",
        "ner",
        "--model-params",
        "22M",
        "--train-examples",
        "14041",
        "--memory-gb",
        "16",
    )
    raw = yaml.safe_load(out)
    assert config.method == "full" and "prompt" not in raw
    assert config.train.lr == 2e-5  # the method's own default, not the prompt's rate


@pytest.mark.parametrize(("text", "value"), [("22M", 22e6), ("7b", 7e9), ("1.5e9", 1.5e9), ("350", 350)])
def test_parameter_counts(text: str, value: float) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-params", "big"], "--model-params 'big': expected a positive number"),
        (["--task", "poetry"], "--task 'poetry': expected one of"),
        (["--train-examples", "0"], "--train-examples: must be at least 1"),
        (["--memory-gb", "0"], "--memory-gb: must be positive"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    base = {"--task": "ner", "--model-params": "22M", "--train-examples": "100", "--memory-gb": "16"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    assert main(["recommend", *[part for item in base.items() for part in item]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
