"""Search spaces: built-in per method, changed by the config's tune: section, checked before any trial."""

from __future__ import annotations

import optuna
import pytest

from ptuning_v2.config import ConfigError
from ptuning_v2.methods import METHODS, resolve_run_config
from ptuning_v2.tuning.search import open_storage, open_study
from ptuning_v2.tuning.space import check_space, method_space, parse_param, starting_point


def test_config_entries_replace_add_and_remove_builtin_ones() -> None:
    tune = {
        "ptuning_v2": {
            "train.lr": {"low": "1e-4", "high": 1e-2, "log": True},  # YAML reads 1e-4 as a string
            "prompt.dropout": None,
            "train.warmup_ratio": {"choices": [0.0, 0.1]},
        }
    }
    space = method_space("ptuning_v2", tune, "c.yaml")
    assert set(space) == set(METHODS["ptuning_v2"].search_space) - {"prompt.dropout"} | {"train.warmup_ratio"}
    lr = space["train.lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert space["prompt.num_virtual_tokens"].kind == "categorical"
    assert parse_param("lora.rank", {"low": 2, "high": 32}, "x").kind == "int"
    assert set(method_space("lora", None, "c.yaml")) == {"train.lr", "lora.rank", "lora.alpha"}


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"bogus": {}}, "tune has unknown method(s) ['bogus']"),
        (
            {"ptuning_v2": {"train.lr": {"low": 1e-2, "high": 1e-3}}},
            "tune.ptuning_v2.train.lr: low (0.01) must be below",
        ),
        ({"ptuning_v2": {"train.lr": {"low": 0, "high": 1, "log": True}}}, "a log range needs low > 0"),
        ({"ptuning_v2": {"train.lr": {"choices": []}}}, "choices must be a non-empty list"),
        ({"ptuning_v2": {"train.lr": {"low": 1e-3}}}, "needs both low and high"),
        ({"ptuning_v2": {"train.lr": {"lo": 1, "high": 2}}}, "unknown key(s) ['lo']"),
        ({"ptuning_v2": {"train.lr": [1e-3, 1e-2]}}, "expected {low, high} or {choices: [...]}"),
    ],
)
def test_bad_entries_name_the_field(tune, message) -> None:
    with pytest.raises(ConfigError, match="c.yaml") as err:
        method_space("ptuning_v2", tune, "c.yaml")
    assert message in str(err.value)


def test_every_range_end_must_make_a_valid_config() -> None:
    base = {"method": "ptuning_v2"}
    with pytest.raises(
        ConfigError, match=r"tune.ptuning_v2.train.lrr = 0.001: .*unknown field\(s\) \['lrr'\]"
    ):
        check_space(
            method_space("ptuning_v2", {"ptuning_v2": {"train.lrr": {"low": 1e-3, "high": 1}}}, "c"),
            base,
            "c",
        )
    with pytest.raises(ConfigError, match=r"prompt.dropout = 1.5: .*dropout must be in \[0, 1\)"):
        check_space(
            method_space("ptuning_v2", {"ptuning_v2": {"prompt.dropout": {"low": 0.0, "high": 1.5}}}, "c"),
            base,
            "c",
        )
    check_space(method_space("ptuning_v2", None, "c"), base, "c")  # the built-in space is valid


def test_first_trial_starts_from_the_configs_own_values_inside_the_space() -> None:
    run = resolve_run_config({"prompt": {"num_virtual_tokens": 20}, "train": {"lr": 0.5}})
    start = starting_point(method_space("ptuning_v2", None, "c"), run)
    # lr 0.5 and length 20 lie outside the space: the sampler chooses those
    assert start == {"train.head_lr": 5e-3, "prompt.reparameterize": False, "prompt.dropout": 0.0}


def test_a_stored_study_refuses_another_config(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    identity = {"config": {"train": {"max_steps": 4}}, "search space": {}, "metric": "accuracy"}
    study = open_study(storage, "s", "maximize", identity, seed=0, trials=3, prune_after=4)
    assert study.user_attrs["ptv2"] == identity
    assert open_study(storage, "s", "maximize", identity, seed=0, trials=3, prune_after=4).study_name == "s"
    changed = {**identity, "config": {"train": {"max_steps": 8}}}
    with pytest.raises(ConfigError, match="study 's' was run with another config"):
        open_study(storage, "s", "maximize", changed, seed=0, trials=3, prune_after=4)
    with pytest.raises(ConfigError, match="another --study-name"):
        open_study(storage, "s", "minimize", identity, seed=0, trials=3, prune_after=4)
    assert len(optuna.get_all_study_summaries(storage)) == 1


def test_a_bad_storage_url_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"--storage 'nosuchdb://x'"):
        open_storage("nosuchdb://x")
