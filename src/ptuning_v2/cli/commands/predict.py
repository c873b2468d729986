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


def read_inputs(args: argparse.Namespace) -> tuple[list[str], list[int], list[int]]:
    """The non-empty input lines, the numbers of the empty ones (left out: each output echoes its input),
    and each input's line (for texts given as arguments: its position among them)."""
    if args.texts:
        return list(args.texts), [], list(range(1, len(args.texts) + 1))
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
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise DataError("no input texts", file=source)
    return [line for _, line in numbered], empty, [number for number, _ in numbered]


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.trained.model import load_trained

    inputs, empty, where = read_inputs(args)
    task, model = load_trained(args.checkpoint)
    task.report.read("predict", len(inputs) + len(empty))
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    task.report.skip("predict", f"empty: line {shown}", len(empty))
    try:
        predictions = task.predict(model, [task.parse_input(text) for text in inputs])
    except DataError as exc:  # the task names an input by its index: name it as the user gave it
        if exc.file is not None or exc.record is None or not exc.record.isdigit():
            raise
        number = where[int(exc.record)]
        if args.texts:
            raise DataError(exc.problem, record=f"text {number}", field=exc.field) from None
        source = args.file if args.file and args.file != "-" else "<stdin>"
        raise DataError(exc.problem, source, number, exc.field) from None
    for prediction in predictions:
        print(json.dumps(finite(prediction), ensure_ascii=False, allow_nan=False))
    for line in task.report.notices():
        print(f"[data] {line}", file=sys.stderr)
    return 0
