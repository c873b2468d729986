"""``ptv2 data list`` and ``ptv2 data pull NAME``: the built-in data sets."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list or fetch the built-in data sets")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list the built-in data sets").set_defaults(func=run_list)
    pull = actions.add_parser("pull", help="fetch a built-in data set into the cache")
    pull.add_argument("name")
    pull.set_defaults(func=run_pull)


def run_list(args: argparse.Namespace) -> int:
    from ptuning_v2.data import list_builtin

    for entry in list_builtin():
        print(f"{entry.name:16} {entry.task:15} {entry.source.spec:24} {entry.description}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    """Fetch, build, and say what to cite and what to expect of the data."""
    from ptuning_v2.data import get_builtin, load_builtin, pull_builtin

    folder = pull_builtin(args.name)
    splits = load_builtin(args.name)
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in splits.items())
    entry = get_builtin(args.name)
    print(f"{args.name}: {sizes} (files in {folder})")
    print(f"cite: {entry.citation}")
    if entry.notes:
        print(f"note: {entry.notes}")
    return 0
