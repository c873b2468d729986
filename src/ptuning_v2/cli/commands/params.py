"""``ptv2 params MODEL --method a,b --num-virtual-tokens 8,32``: trainable parameters without training.

Each method is built on a fresh copy of the backbone, exactly as training builds it, and its
trainable parameters counted; a classification head (``hidden * labels + labels``) is reported
apart and in the total, since every method trains it.
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from ptuning_v2.config import ConfigError

_ALL = "all"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="trainable parameters and their share per method and prompt length")
    p.add_argument("model", help="model alias, folder or hub name")
    p.add_argument("--method", default=_ALL, help="comma-separated methods (default: all registered)")
    p.add_argument(
        "--num-virtual-tokens", default="20", help="comma-separated prompt lengths, e.g. 8,16,64 (default 20)"
    )
    p.add_argument("--task", default="classification", help="task family; sets the backbone kind")
    p.add_argument(
        "--num-labels", type=int, default=2, help="classes of the classification head (classification only)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--num-virtual-tokens {text!r}: expected comma-separated integers") from None
    if not lengths or any(n < 1 for n in lengths):
        raise ConfigError(f"--num-virtual-tokens {text!r}: lengths must be >= 1")
    return lengths


def parameter_report(
    model: str, methods: list[str], lengths: list[int], task: str, num_labels: int
) -> list[dict[str, Any]]:
    """One row per method and prompt length; methods whose count does not depend on the length get one row."""
    from ptuning_v2.methods import get_method, resolve_run_config
    from ptuning_v2.models import load_backbone, load_tokenizer
    from ptuning_v2.tasks import get_task

    tokenizer = load_tokenizer(model)
    backbone = load_backbone(model, get_task(task).backbone_kind)
    backbone_total = sum(p.numel() for p in backbone.parameters())
    hidden = backbone.get_input_embeddings().embedding_dim
    head = hidden * num_labels + num_labels if task == "classification" else 0
    rows = []
    for method in methods:
        counts = []
        for k in lengths:
            # The sequence length does not change any count; 1 keeps every prompt length within the positions.
            data = {"model": model, "task": task, "method": method}
            data |= {"prompt": {"num_virtual_tokens": k}, "train": {"max_length": 1}}
            run = resolve_run_config(data, f"--method {method}")
            encoder = get_method(method).build(copy.deepcopy(backbone), run, tokenizer)
            trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
            counts.append((k, trainable, sum(p.numel() for p in encoder.parameters())))
        if len({c[1] for c in counts}) == 1:
            counts = [(None, counts[0][1], counts[0][2])]
        for k, trainable, total in counts:
            rows.append(
                {
                    "method": method,
                    "num_virtual_tokens": k,
                    "trainable": trainable,
                    "head": head,
                    "trainable_with_head": trainable + head,
                    "total_with_head": total + head,
                    "share": trainable / total,
                    "share_with_head": (trainable + head) / (total + head),
                    "backbone_params": backbone_total,
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]], task: str) -> str:
    head_note = "with head" if task == "classification" else "(no head counted)"
    lines = [
        f"{'method':16} {'k':>5} {'trainable':>12} {'share':>9} {'+ head':>12} {'share ' + head_note:>18}",
    ]
    for row in rows:
        k = "-" if row["num_virtual_tokens"] is None else str(row["num_virtual_tokens"])
        lines.append(
            f"{row['method']:16} {k:>5} {row['trainable']:>12,} {row['share']:>9.4%} "
            f"{row['trainable_with_head']:>12,} {row['share_with_head']:>18.4%}"
        )
    backbone = rows[0]["backbone_params"] if rows else 0
    lines.append(
        f"backbone parameters: {backbone:,}; share = trainable / all parameters of the adapted model"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.methods import METHODS, get_method

    if args.num_labels < 2:
        raise ConfigError(f"--num-labels: a classifier has at least 2 classes, got {args.num_labels}")
    methods = (
        list(METHODS) if args.method == _ALL else [m.strip() for m in args.method.split(",") if m.strip()]
    )
    for method in methods:
        try:
            get_method(method)
        except ValueError as exc:
            raise ConfigError(f"--method: {exc}") from exc
    rows = parameter_report(
        args.model, methods, parse_lengths(args.num_virtual_tokens), args.task, args.num_labels
    )
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, args.task))
    return 0
