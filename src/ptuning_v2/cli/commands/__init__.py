"""Sub-commands that train, evaluate and predict."""

from ptuning_v2.cli.commands import evaluate, predict, train

__all__ = ["evaluate", "predict", "train"]
