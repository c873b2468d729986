"""``ptv2 recommend``: which fine-tuning method to start with, a starting config, and why.

From the task, model size, labelled examples, tasks to serve and memory budget it picks one method
with the rules in docs/recommend.md (each with its source: the P-Tuning v2 paper's findings or our
own measured tables) and prints the reasons as YAML comments above a config that ``ptv2 train``
accepts. The prompt length and learning rates are suggest-config's (its GUIDANCE table).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import yaml

from ptuning_v2.cli.commands.suggest_config import GUIDANCE, size_class
from ptuning_v2.config import ConfigError, finite_float

HARD_TASKS = ("ner", "qa")
"""Sequence labelling and extractive QA: where input-only prompts fail (the paper's NER/QA/SRL results)."""
NLU_TASKS = ("classification", "multiple_choice")
"""Where the paper finds input-only prompt tuning competitive at >= 10B (its SuperGLUE scale results)."""
BYTES_FROZEN = 6
"""Per parameter to train a frozen backbone: fp32 weights (4) plus headroom for activations."""
BYTES_FULL = 20
"""Per parameter for full fine-tuning with AdamW: weights, gradients, two moments (16) plus headroom."""
LARGE = 10e9
BILLION = 1e9
FULL_MIN_EXAMPLES = 5_000
"""Below this many labelled examples full fine-tuning is not proposed (our wins were at 10k+)."""
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kKmMbB]?)\s*$")


@dataclass
class Recommendation:
    method: str
    rule: str
    """The rule of docs/recommend.md that chose the method (R1-R5)."""
    reasons: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def parse_count(text: str) -> float:
    """``350M``, ``7B``, ``1.5e9``, ``22713216``: a positive count."""
    match = _SIZE.match(text)
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"--model-params {text!r}: expected a positive number such as 110M, 7B or 3.5e8")
    return float(match[1]) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[match[2].lower()]


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def choose(task: str, params: float, examples: int, tasks: int, memory_gb: float) -> Recommendation:
    """The method and the reasons for it (rules R0-R5 of docs/recommend.md, in order)."""
    frozen_gb, full_gb = BYTES_FROZEN * params / 1e9, BYTES_FULL * params / 1e9
    if memory_gb < frozen_gb:  # R0
        raise ConfigError(
            f"--memory-gb {memory_gb:g}: a {human(params)}-parameter model needs about {frozen_gb:.1f} GB "
            "even frozen (fp32 weights and activations); pick a smaller model or more memory"
        )
    if params >= LARGE and task in NLU_TASKS:
        rec = Recommendation("prompt_tuning", "R1")
        rec.reasons += [
            f"At {human(params)} parameters input-only prompt tuning matches fine-tuning on language "
            "understanding (P-Tuning v2 paper: at 10B, not below), with the fewest trained values.",
            "Alternative: ptuning_v2, which the paper finds comparable to fine-tuning at every scale.",
        ]
    elif tasks > 1:
        rec = Recommendation("ptuning_v2", "R2")
        rec.reasons += [
            f"{tasks} tasks on one backbone: each task is a deep prompt of 0.1-3% of the parameters and "
            "the frozen backbone is shared; full fine-tuning would keep one model copy per task.",
            "Deep prompts match fine-tuning from 300M to 10B parameters and on sequence labelling and QA "
            "(the paper's main finding), and beat input-only prompt tuning at our defaults on all four "
            "built-in sets (3 seeds: +2.2 to +3.5 accuracy points on classification, +8.3 F1 on "
            "CoNLL-2003).",
        ]
    elif params < BILLION and full_gb <= memory_gb and examples >= FULL_MIN_EXAMPLES:
        rec = Recommendation("full", "R3")
        rec.reasons += [
            "One task on a model under 1B with enough data: full fine-tuning led P-Tuning v2 in our "
            "tables at equal steps (CoNLL-2003 test F1 0.8671 vs 0.8376 at 3,000 steps; SQuAD F1 34.4 "
            "vs 28.6).",
            f"It fits: about {full_gb:.1f} GB ({BYTES_FULL} bytes per parameter with AdamW) of your "
            f"{memory_gb:g} GB.",
        ]
    elif params >= BILLION:
        rec = Recommendation("ptuning_v2", "R4")
        rec.reasons.append(
            f"At {human(params)} parameters the paper finds deep prompts on par with fine-tuning (scales "
            f"300M-10B), and a task is a prompt of megabytes instead of a {4 * params / 1e9:.0f} GB model copy."
        )
    else:
        rec = Recommendation("lora", "R5")
        if full_gb > memory_gb:
            why = (
                f"full fine-tuning needs about {full_gb:.1f} GB ({BYTES_FULL} bytes per parameter), "
                f"over {memory_gb:g} GB"
            )
        else:
            why = (
                f"{examples:,} labelled examples are few for updating every weight (full fine-tuning is "
                f"proposed from {FULL_MIN_EXAMPLES:,})"
            )
        rec.reasons += [
            f"One task on a model under 1B, and {why}.",
            "Among the light methods LoRA tied or led P-Tuning v2 in our 3-seed comparisons: at the "
            "defaults with half its trained parameters (test accuracy 0.7809 vs 0.7822 on Rotten "
            "Tomatoes, 0.9139 vs 0.9052 on TREC-6), and at equal parameters with both tuned it led by "
            "1.8 points (TREC-6, 0.9164 vs 0.8984).",
            "Alternative: ptuning_v2 once several tasks should share this backbone.",
        ]
    if task in HARD_TASKS:
        rec.reasons.append(
            "Not prompt_tuning: input-only prompts fail on sequence labelling and QA (the paper's NER, QA "
            "and SRL results; our CoNLL-2003 test F1 0.6300 against 0.7130 for P-Tuning v2, 3 seeds)."
        )
    return rec


def starting_config(rec: Recommendation, task: str, params: float, examples: int, model: str) -> list[str]:
    """Fill ``rec.config`` from suggest-config's guidance and the method's defaults; the notes on it."""
    from ptuning_v2.methods import get_method, load_run_config

    guide = GUIDANCE[task]
    size, factor = size_class(params)
    overrides = {
        "model": model,
        "task": task,
        "method": rec.method,
        "data.train": "train.jsonl",
        "data.validation": "dev.jsonl",
        "data.test": "test.jsonl",
        "train.epochs": guide.epochs,
        "train.batch_size": guide.batch_size,
        "train.max_length": guide.max_length,
    }
    steps = math.ceil(examples / guide.batch_size) * guide.epochs
    overrides["train.eval_every"] = max(1, int(steps // 10))
    has_prompt = get_method(rec.method).prompt is not None
    notes = [
        f"Budget: {examples:,} examples x {guide.epochs:g} epochs at batch {guide.batch_size} = "
        f"{steps:,.0f} steps, dev evaluated every tenth."
    ]
    if has_prompt:
        length = max(4, round(guide.prompt_length * factor))
        overrides["prompt.num_virtual_tokens"] = length
        notes.append(
            f"Prompt length {length} (suggest-config's {guide.prompt_length} for {task}, model {size})."
        )
    if rec.method == "ptuning_v2":
        overrides["train.lr"] = guide.lr
    run = load_run_config(None, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])
    data = run.to_dict()
    train_keys = ("epochs", "batch_size", "max_length", "lr", "head_lr", "weight_decay", "eval_every")
    rec.config = {
        "model": data["model"],
        "task": data["task"],
        "method": data["method"],
        "data": {k: v for k, v in data["data"].items() if k in ("train", "validation", "test")},
    }
    if has_prompt:
        rec.config["prompt"] = {"num_virtual_tokens": data["prompt"]["num_virtual_tokens"]}
    rec.config["train"] = {k: data["train"][k] for k in train_keys}
    notes.append(
        "Learning rates: "
        + ("suggest-config's for the task." if rec.method == "ptuning_v2" else f"the {rec.method} defaults.")
    )
    return notes


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="name a fine-tuning method and a starting config, and say why")
    p.add_argument("--task", required=True, help=f"task family: {', '.join(GUIDANCE)}")
    p.add_argument("--model-params", required=True, help="backbone parameters, e.g. 22M, 350M, 7B")
    p.add_argument("--train-examples", type=int, required=True, help="labelled training examples")
    p.add_argument("--num-tasks", type=int, default=1, help="tasks to serve from this backbone (default 1)")
    p.add_argument(
        "--memory-gb", type=finite_float, required=True, help="accelerator (or RAM) memory for training, GB"
    )
    p.add_argument("--model", default="MODEL", help="model alias, folder or hub name for the config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.task not in GUIDANCE:
        raise ConfigError(f"--task {args.task!r}: expected one of {', '.join(GUIDANCE)}")
    for name in ("train_examples", "num_tasks"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if not args.memory_gb > 0:
        raise ConfigError(f"--memory-gb: must be positive, got {args.memory_gb}")
    params = parse_count(args.model_params)
    rec = choose(args.task, params, args.train_examples, args.num_tasks, args.memory_gb)
    notes = starting_config(rec, args.task, params, args.train_examples, args.model)
    print(f"# Recommended method: {rec.method} (rule {rec.rule} in docs/recommend.md)")
    for reason in rec.reasons:
        print(textwrap.fill(reason, 100, initial_indent="# - ", subsequent_indent="#   "))
    print("# Starting config (tune train.lr on your dev set; not a tuned config):")
    print("\n".join(f"#   {line}" for line in notes))
    print(yaml.safe_dump(rec.config, sort_keys=False), end="")
    return 0
