"""``ptv2 predict CHECKPOINT [TEXT ...] [--file F]``: JSON lines out, one per input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ptuning_v2.data import DataError
from ptuning_v2.data.readers import decode_utf8, read_text
from ptuning_v2.utils.io import finite


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict with a checkpoint; texts as arguments, a file, or stdin")
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("texts", nargs="*", help="inputs; for sentence pairs join the two with a tab")
    p.add_argument("--file", help="one input per line (a tab separates sentence pairs); '-' for stdin")
    p.set_defaults(func=run)


def read_inputs(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """The non-empty input lines, and the numbers of the empty ones (left out: each output echoes its input)."""
    if args.texts:
        return list(args.texts), []
    source = args.file if args.file and args.file != "-" else "<stdin>"
    if source != "<stdin>":
        path = Path(source)
        if not path.is_file():
            raise DataError("no such file", file=path)
        text = read_text(path)
    else:
        stream = getattr(sys.stdin, "buffer", None)
        text = decode_utf8(stream.read(), source) if stream is not None else sys.stdin.read()
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line
    empty = [number for number, line in enumerate(lines, start=1) if not line.strip()]
    inputs = [line for line in lines if line.strip()]
    if not inputs:
        raise DataError("no input texts", file=source)
    return inputs, empty


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.trained.model import load_trained

    inputs, empty = read_inputs(args)
    task, model = load_trained(args.checkpoint)
    task.report.read("predict", len(inputs) + len(empty))
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    task.report.skip("predict", f"empty: line {shown}", len(empty))
    for prediction in task.predict(model, [task.parse_input(text) for text in inputs]):
        print(json.dumps(finite(prediction), ensure_ascii=False, allow_nan=False))
    for line in task.report.notices():
        print(f"[data] {line}", file=sys.stderr)
    return 0
