"""``ptv2 suggest-config --task T --model M``: a starting run config from the method's guidance.

P-Tuning v2's findings: simple classification prefers short prompts (under 20), hard sequence
labelling, QA and generation prefer long ones (~100); very large models need shorter prompts; the
prompt trains at a learning rate around 1e-2 (3e-2 for sequence labelling). The model's size is read from its config (no weights
are loaded); the data set is the task's built-in one where there is one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import yaml

from ptuning_v2.config import ConfigError


@dataclass(frozen=True)
class Guidance:
    prompt_length: int
    lr: float
    epochs: float
    batch_size: int
    max_length: int


# A method's swept per-task defaults (Method.task_defaults: P-Tuning v2 on classification and NER) take the
# place of the prompt length and lr below; these serve every other method and task family.
GUIDANCE: dict[str, Guidance] = {
    "classification": Guidance(16, 1e-2, 10, 32, 128),
    "multiple_choice": Guidance(16, 1e-2, 10, 16, 128),
    # The official NER scripts train at 3e-2 for 30 epochs; on MiniLM 5e-2 > 3e-2 > 1e-2 (docs/understanding_tasks.md).
    "ner": Guidance(64, 3e-2, 20, 32, 128),
    "qa": Guidance(128, 5e-3, 5, 16, 384),
    "causal_lm": Guidance(64, 5e-3, 5, 8, 512),
    "seq2seq": Guidance(64, 5e-3, 5, 8, 512),
}


LORA_TIES = ("classification", "ner")
"""Families where our 3-seed comparisons at the defaults put LoRA level with or ahead of P-Tuning v2 (docs/tuning.md)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suggest-config", help="print a starting YAML config for a task and model")
    p.add_argument("--task", required=True, help=f"task family: {', '.join(GUIDANCE)}")
    p.add_argument("--model", required=True, help="model alias, folder or hub name")
    p.add_argument("--method", default="ptuning_v2", help="fine-tuning method (default ptuning_v2)")
    p.set_defaults(func=run)


def estimate_parameters(config: Any) -> int:
    """~12 h^2 per layer (attention + 4h MLP) plus the embedding matrix: close enough to pick a size class."""
    text = config.get_text_config()
    hidden, layers = text.hidden_size, text.num_hidden_layers
    if getattr(config, "is_encoder_decoder", False):
        layers += getattr(text, "num_decoder_layers", None) or layers
    return 12 * layers * hidden**2 + text.vocab_size * hidden


def size_class(n_params: int) -> tuple[str, float]:
    """A name and the factor on the prompt length: very large models need shorter prompts."""
    if n_params < 1e9:
        return "under 1B", 1.0
    if n_params < 1e10:
        return "1B-10B", 0.5
    return "over 10B", 0.25


def suggest(task: str, model: str, method: str) -> tuple[dict[str, Any], list[str]]:
    """The config (as YAML data) and the comment lines that explain it."""
    from transformers import AutoConfig

    from ptuning_v2.data import list_builtin
    from ptuning_v2.methods import get_method, resolve_run_config, with_method_defaults
    from ptuning_v2.models import resolve_model
    from ptuning_v2.tasks import get_task

    try:
        task_cls = get_task(task)
        has_prompt = get_method(method).prompt is not None
        swept = get_method(method).task_defaults.get(task, {})  # the sweeps' numbers win over the guidance
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if task not in GUIDANCE:
        raise ConfigError(f"no guidance for task {task!r}; tasks with guidance: {sorted(GUIDANCE)}")
    guide = GUIDANCE[task]
    n_params = estimate_parameters(AutoConfig.from_pretrained(resolve_model(model)))
    size, factor = size_class(n_params)
    builtin = [entry.name for entry in list_builtin() if entry.task in (task, task_cls.data_family)]
    data: dict[str, Any] = {"model": model, "task": task, "method": method}
    data["data"] = (
        {"name": builtin[0]}
        if builtin
        else {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}
    )
    train = {"epochs": guide.epochs, "batch_size": guide.batch_size, "max_length": guide.max_length}
    notes = [
        f"Starting point for task {task} on {model} (~{n_params / 1e6:,.0f}M parameters: {size}), "
        f"method {method}.",
        "Tune "
        + ("prompt.num_virtual_tokens and " if has_prompt else "")
        + "train.lr on your dev set; this is not a tuned config.",
    ]
    if has_prompt:
        length = max(4, round(swept.get("prompt.num_virtual_tokens", guide.prompt_length) * factor))
        data["prompt"] = {"num_virtual_tokens": length}
        why = (
            f"the method's {task} default from searches on the built-in data"
            if "prompt.num_virtual_tokens" in swept
            else "short prompts suit simple classification, long ones (~64-128) sequence labelling, QA and "
            "generation"
        )
        notes.append(
            f"Prompt length {length}: {why}"
            + ("; halved/quartered for very large models." if factor < 1 else ".")
        )
    if swept:
        notes.append(
            f"Learning rates {swept.get('train.lr')} / {swept.get('train.head_lr')} (prompt / head): the "
            f"method's {task} defaults, from searches on the built-in data (docs/tuning.md, Sweeps)."
        )
    elif method == "ptuning_v2":
        train["lr"] = guide.lr
        notes.append(
            f"Learning rate {guide.lr:g}: deep prompts train at rates far above full fine-tuning's "
            "(5e-3 for QA and generation, 1e-2 to 5e-2 for classification and NER)."
        )
    else:
        notes.append(f"Learning rates: the {method} defaults.")
    data["train"] = train
    resolve_run_config(data, "suggested config")  # what we print must be a valid config
    merged = with_method_defaults(data)
    data["train"] = {**merged.get("train", {}), **train}
    if (task_cls.data_family or task_cls.name) == "seq2seq":  # generation trains no head, so no head_lr
        data["train"].pop("head_lr", None)
    if not builtin:
        notes.append(f"No built-in data set for {task}: point data.train/validation/test at your files.")
    if method == "ptuning_v2" and task in LORA_TIES and factor == 1.0:
        notes.append(
            "One task on one small backbone? LoRA matched or beat P-Tuning v2 with half the trained "
            "parameters in our comparisons on the built-in sets (docs/tuning.md). P-Tuning v2 pays off "
            "when several tasks share the frozen backbone: `ptv2 recommend --num-tasks N` weighs that."
        )
    return data, notes


def run(args: argparse.Namespace) -> int:
    data, notes = suggest(args.task, args.model, args.method)
    print("\n".join(f"# {line}" for line in notes))
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0
