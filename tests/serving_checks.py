"""What the serving tests send and compare against: inputs of the three tiny tasks (the serving conftest's
``checkpoints``), and ``ptv2 predict``'s own answers."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from ptuning_v2.cli.main import main

SENTIMENT = ["the movie was great", "awful film", "a boring story with a worst plot"]
TOPIC = ["a story about paris", "a story about mary", "the actor"]
NER = ["John met Mary in Paris.", "Berlin is in the north", "nothing here"]


def cli_predict(checkpoint: Path, inputs: list[str]) -> list[dict]:
    """What ``ptv2 predict CHECKPOINT INPUT ...`` prints, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["predict", str(checkpoint), *inputs]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def same_prediction(served: dict, expected: dict) -> None:
    """Equal but for float rounding: a row's scores can move in the last bits with the batch it is in."""
    assert served.keys() == expected.keys()
    for key, value in expected.items():
        if key in ("score", "probabilities"):
            assert served[key] == pytest.approx(value, abs=1e-5)
        else:
            assert served[key] == value, key
