"""The method registry: the one list of methods, its typed defaults, and the per-method config sections."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.methods import (
    METHODS,
    Method,
    compared_methods,
    load_run_config,
    prompt_methods,
    register_method,
)
from ptuning_v2.methods.core import build_full
from ptuning_v2.tuning.space import check_space, method_space

DOCS = Path(__file__).parents[2] / "docs" / "methods.md"
# (lr, head_lr, weight_decay) each method trained with before the defaults became registry data.
DEFAULTS = {
    "full": (2e-5, 2e-5, 0.01),
    "linear_probe": (1e-2, 5e-3, 0.0),
    "prompt_tuning": (1e-2, 5e-3, 0.0),
    "ptuning_v1": (1e-3, 5e-3, 0.0),
    "ptuning_v1_mlp": (1e-3, 5e-3, 0.0),
    "prefix_tuning": (5e-3, 5e-3, 0.0),
    "ptuning_v2": (5e-2, 5e-3, 0.0),  # classification's sweep-chosen rate (1e-2 before the sweeps)
    "lora": (1e-3, 5e-3, 0.0),
}


@pytest.mark.parametrize("method", list(DEFAULTS))
def test_each_method_keeps_its_defaults_under_the_users_values(method: str) -> None:
    run = load_run_config(None, [f"method={method}"])
    assert (run.train.lr, run.train.head_lr, run.train.weight_decay) == DEFAULTS[method]
    assert run.prompt.reparameterize is (method == "prefix_tuning")
    mine = load_run_config(None, [f"method={method}", "train.lr=0.25", "train.weight_decay=0.5"])
    assert (mine.train.lr, mine.train.head_lr, mine.train.weight_decay) == (0.25, DEFAULTS[method][1], 0.5)


def test_the_registry_is_every_listing() -> None:
    assert list(METHODS) == list(DEFAULTS)
    assert compared_methods() == [m for m in DEFAULTS if m != "ptuning_v1_mlp"]
    assert prompt_methods() == [
        "prompt_tuning",
        "ptuning_v1",
        "ptuning_v1_mlp",
        "prefix_tuning",
        "ptuning_v2",
    ]
    for name in METHODS:  # every built-in search space makes valid configs at both ends of each range
        check_space(method_space(name, None, "c"), {"method": name}, "c")


def test_the_docs_table_lists_the_registry_with_its_defaults() -> None:
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([-\d][^|]*) \|", DOCS.read_text(encoding="utf-8"), re.M)
    assert [name for name, _ in rows] == list(METHODS)
    for name, rates in rows:
        lr, head_lr = (part.split()[0] for part in rates.split(" / "))
        run = load_run_config(None, [f"method={name}"])
        assert lr == "-" or float(lr) == run.train.lr, name
        assert float(head_lr) == run.train.head_lr, name


def test_a_default_that_is_not_a_valid_config_fails_at_registration() -> None:
    with pytest.raises(ValueError, match="did you mean train.lr"):
        register_method(Method("bad_lr", "typo", build_full, {"train.lrr": 1e-3}))
    with pytest.raises(ValueError, match="train.lr: must be a positive number"):
        register_method(Method("bad_value", "negative", build_full, {"train.lr": -1.0}))
    assert "bad_lr" not in METHODS and "bad_value" not in METHODS


def test_a_deep_prompt_of_no_tokens_is_refused_when_the_config_is_read() -> None:
    for method in ("ptuning_v2", "prefix_tuning"):
        with pytest.raises(ConfigError, match="trains only the head"):
            load_run_config(None, [f"method={method}", "prompt.num_virtual_tokens=0"])
    assert load_run_config(None, ["method=prompt_tuning", "prompt.layer_lengths=[0, 0]"]).method


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.rank=0", "lora.rank: must be an integer >= 1, got 0"),
        ("lora.alpha=0", "lora.alpha: must be a positive number, got 0.0"),
        ("lora.dropout=1.5", "lora.dropout: must be in [0, 1), got 1.5"),
        ("lora.target_modules=[]", "lora.target_modules: expected a non-empty list"),
        ("lora.target_modules=query", "lora.target_modules: expected a list, got 'query'"),
        ("ptuning_v1.encoder=gru", "ptuning_v1.encoder: 'gru' is not one of ['lstm', 'mlp']"),
        ("ptuning_v1.hidden_size=0", "ptuning_v1.hidden_size: must be an integer >= 1, got 0"),
        ("ptuning_v1.width=8", "unknown field(s) ['width']"),
    ],
)
def test_per_method_sections_are_validated_like_the_rest(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config(None, ["method=lora", override])


def test_ptuning_v1_mlp_refuses_an_lstm_encoder_before_any_data_is_read() -> None:
    with pytest.raises(ConfigError, match="method ptuning_v1_mlp has an MLP encoder"):
        load_run_config(None, ["method=ptuning_v1_mlp", "ptuning_v1.encoder=lstm"])
    run = load_run_config(None, ["method=ptuning_v1", "ptuning_v1.encoder=mlp", "ptuning_v1.hidden_size=64"])
    assert (run.ptuning_v1.encoder, run.ptuning_v1.hidden_size) == ("mlp", 64)


def test_a_stored_config_without_the_new_sections_reads_as_before() -> None:
    run = RunConfig.from_dict({"method": "lora", "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0}})
    assert run.lora.target_modules is None and run.ptuning_v1.encoder is None


def test_task_family_defaults_sit_over_the_methods_and_under_the_users(monkeypatch) -> None:
    method = Method(
        "family", "per-task defaults", build_full, {"train.lr": 1e-2, "train.head_lr": 5e-3},
        task_defaults={"ner": {"train.lr": 5e-2, "prompt.num_virtual_tokens": 64}},
    )  # fmt: skip
    monkeypatch.setitem(METHODS, "family", method)
    ner = load_run_config(None, ["method=family", "task=ner"])
    assert (ner.train.lr, ner.train.head_lr, ner.prompt.num_virtual_tokens) == (5e-2, 5e-3, 64)
    other = load_run_config(None, ["method=family", "task=classification"])
    assert (other.train.lr, other.prompt.num_virtual_tokens) == (1e-2, RunConfig().prompt.num_virtual_tokens)
    mine = load_run_config(
        None, ["method=family", "task=ner", "train.lr=0.25", "prompt.num_virtual_tokens=8"]
    )
    assert (mine.train.lr, mine.prompt.num_virtual_tokens) == (0.25, 8)


def test_a_task_family_default_that_is_not_valid_fails_at_registration() -> None:
    with pytest.raises(ValueError, match="defaults for ner: .*train.lr: must be a positive number"):
        register_method(Method("bad_family", "x", build_full, task_defaults={"ner": {"train.lr": -1.0}}))
    assert "bad_family" not in METHODS
