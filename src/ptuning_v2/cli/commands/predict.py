"""``ptv2 predict CHECKPOINT [TEXT ...] [--file F]``: JSON lines out, one per input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ptuning_v2.data import DataError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict with a checkpoint; texts as arguments, a file, or stdin")
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("texts", nargs="*", help="inputs; for sentence pairs join the two with a tab")
    p.add_argument("--file", help="one input per line (a tab separates sentence pairs); '-' for stdin")
    p.set_defaults(func=run)


def read_inputs(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return list(args.texts)
    if args.file and args.file != "-":
        path = Path(args.file)
        if not path.is_file():
            raise DataError("no such file", file=path)
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = sys.stdin.read().splitlines()
    inputs = [line for line in lines if line.strip()]
    if not inputs:
        raise DataError("no input texts", file=args.file or "<stdin>")
    return inputs


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.training.recipe import load_trained

    inputs = read_inputs(args)
    task, model = load_trained(args.checkpoint)
    parsed = [tuple(text.split("\t", 1)) if "\t" in text else text for text in inputs]
    for prediction in task.predict(model, parsed):
        print(json.dumps(prediction, ensure_ascii=False))
    return 0
