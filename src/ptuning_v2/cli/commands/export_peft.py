"""``ptv2 export-peft CHECKPOINT OUT_DIR`` and ``ptv2 import-peft ADAPTER_DIR OUT_DIR --model M``.

A decoder-only P-Tuning v2 prompt as PEFT's prefix-tuning adapter, and back (see
``ptuning_v2.interop.peft_format`` for the layout and the position convention).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export-peft", help="write a decoder-only prompt checkpoint as a PEFT prefix adapter"
    )
    export.add_argument("checkpoint", help="checkpoint folder of a P-Tuning v2 run on a causal LM")
    export.add_argument("out_dir", help="where adapter_config.json and adapter_model.safetensors go")
    export.add_argument(
        "--allow-position-mismatch",
        action="store_true",
        help="export a prompt trained with prompt.position_offset=none (PEFT's logits will then differ)",
    )
    export.set_defaults(func=run_export)

    imp = sub.add_parser("import-peft", help="turn a PEFT prefix-tuning adapter into a ptuning-v2 checkpoint")
    imp.add_argument(
        "adapter_dir", help="PEFT adapter folder (adapter_config.json, adapter_model.safetensors)"
    )
    imp.add_argument("out_dir", help="where the checkpoint goes (usable by ptv2 predict / eval)")
    imp.add_argument("--model", required=True, help="the backbone the adapter was trained on")
    imp.add_argument("--config", help="YAML run config for the task options (task causal_lm)")
    imp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    imp.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    from ptuning_v2.interop.peft_format import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, args.allow_position_mismatch)
    print(f"PEFT prefix-tuning adapter written to {out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ptuning_v2.interop.peft_format import import_checkpoint
    from ptuning_v2.methods import load_run_config

    overrides = ["task=causal_lm", "method=ptuning_v2", *args.overrides, f"model={args.model}"]
    out = import_checkpoint(args.adapter_dir, args.out_dir, load_run_config(args.config, overrides))
    print(f"ptuning-v2 checkpoint written to {out}")
    return 0
