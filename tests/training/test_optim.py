"""Layer-wise prompt learning rates: placed by the backbone's layer index, thirds or explicit ranges."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from ptuning_v2.config import ConfigError, DeepPromptConfig, TrainConfig
from ptuning_v2.methods import load_run_config
from ptuning_v2.prompts.model import DeepPromptModel
from ptuning_v2.training.optim import param_groups

SEED_RANGES = [[0, 2, 0.5], [3, 8, 1.0], [9, 11, 1.5]]  # the seed's split of a 12-layer model


def twelve_layer_model(**prompt: object) -> torch.nn.ModuleDict:
    """A 12-layer BERT (hidden 16) with deep prompts and a head, as task models are laid out."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32
    )
    encoder = DeepPromptModel(BertModel(config), DeepPromptConfig(num_virtual_tokens=2, **prompt))
    return torch.nn.ModuleDict({"encoder": encoder, "head": torch.nn.Linear(16, 2)})


def layer_lrs(model: torch.nn.Module, train: TrainConfig) -> dict[str, tuple[str, float]]:
    """Prompt slot -> (group name, learning rate)."""
    by_param = {id(p): (g["name"], g["lr"]) for g in param_groups(model, train) for p in g["params"]}
    return {name: by_param[id(p)] for name, p in model["encoder"].prompt.prompts.items()}


def test_thirds_are_taken_over_the_backbone_layers_not_the_prompted_ones() -> None:
    model = twelve_layer_model(layers=[4, 5, 6, 7, 8])
    lrs = layer_lrs(model, TrainConfig(lr=0.1, layer_lr_multipliers=[1.0, 2.0, 3.0]))
    # 12 layers: 0-3 early, 4-7 middle, 8-11 late; the prompted 4-8 are middle except 8
    assert lrs == {
        "self_4": ("prompt_middle", 0.2),
        "self_5": ("prompt_middle", 0.2),
        "self_6": ("prompt_middle", 0.2),
        "self_7": ("prompt_middle", 0.2),
        "self_8": ("prompt_late", pytest.approx(0.3)),
    }


def test_explicit_ranges_on_a_subset_of_layers() -> None:
    model = twelve_layer_model(layers=[1, 2, 3, 9, 11])
    lrs = layer_lrs(model, TrainConfig(lr=0.1, layer_lr_ranges=SEED_RANGES))
    assert lrs == {
        "self_1": ("prompt_layers_0-2", 0.05),
        "self_2": ("prompt_layers_0-2", 0.05),
        "self_3": ("prompt_layers_3-8", 0.1),
        "self_9": ("prompt_layers_9-11", pytest.approx(0.15)),
        "self_11": ("prompt_layers_9-11", pytest.approx(0.15)),
    }
    # a layer outside every range keeps the base rate
    partial = layer_lrs(twelve_layer_model(layers=[0, 5]), TrainConfig(lr=0.1, layer_lr_ranges=[[0, 2, 0.5]]))
    assert partial == {"self_0": ("prompt_layers_0-2", 0.05), "self_5": ("prompt", 0.1)}


def test_mlp_reparameterisation_trains_as_one_group_at_the_size_weighted_mean_multiplier() -> None:
    # layer 0 (early, x1) gets 2 tokens, layer 11 (late, x3) 6: weights by prompt size 2:6
    model = twelve_layer_model(
        layers=[0, 11], layer_lengths=[2, 6], reparameterize=True, reparam_hidden_size=8
    )
    groups = param_groups(model, TrainConfig(lr=0.1, head_lr=0.02, layer_lr_multipliers=[1.0, 2.0, 3.0]))
    by_name = {g["name"]: (g["lr"], len(g["params"])) for g in groups}
    prompt_params = len(list(model["encoder"].prompt.parameters()))  # embedding + two linear layers
    assert prompt_params == 5
    assert by_name == {"prompt_mlp": (pytest.approx(0.1 * (1 * 2 + 3 * 6) / 8), 5), "head": (0.02, 2)}


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([[0, 2]], r"layer_lr_ranges\[0\]: expected \[first_layer, last_layer, multiplier\]"),
        ([[3, 1, 1.0]], r"layer_lr_ranges\[0\]: layers must satisfy 0 <= first <= last"),
        ([[0, 2, 0.5], [2, 4, 1.0]], r"layers 0-2 and 2-4 overlap"),
        ([[0, 2, 0.0]], r"layer_lr_ranges\[0\]: the multiplier must be a positive number"),
        ([[0, 1.5, 1.0]], r"whole numbers"),
        ([[0, 2, "fast"]], r"the multiplier must be a positive number, got 'fast'"),
        ([], r"expected a list of \[first, last, multiplier\]"),
    ],
)
def test_bad_ranges_are_config_errors_naming_the_entry(ranges: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        param_groups(twelve_layer_model(), TrainConfig(layer_lr_ranges=ranges))


def test_ranges_past_the_backbone_and_both_settings_at_once_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"names layer 12, but the backbone has 12 layers \(0-11\)"):
        param_groups(twelve_layer_model(), TrainConfig(layer_lr_ranges=[[9, 12, 1.5]]))
    with pytest.raises(ConfigError, match="both set"):
        param_groups(
            twelve_layer_model(),
            TrainConfig(layer_lr_multipliers=[0.5, 1.0, 1.5], layer_lr_ranges=SEED_RANGES),
        )


def test_ranges_read_from_a_config_override() -> None:
    run = load_run_config(None, ["train.layer_lr_ranges=[[0, 2, 5e-1], [3, 8, 1.0], [9, 11, 1.5]]"])
    lrs = layer_lrs(twelve_layer_model(layers=[2, 3]), run.train)
    assert lrs == {
        "self_2": ("prompt_layers_0-2", run.train.lr * 0.5),
        "self_3": ("prompt_layers_3-8", run.train.lr),
    }
