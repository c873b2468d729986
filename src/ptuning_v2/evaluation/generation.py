"""Metrics of generated text, from the standard packages, and the untuned-backbone baseline.

BLEU is sacrebleu's corpus BLEU (13a tokenisation); ROUGE-1/2/L are rouge-score's F-measures with
Porter stemming, averaged over examples. All three are on a 0-100 scale, as papers report them.
Perplexity (exp of the mean negative log-likelihood per target token) comes from the task, which
has the teacher-forced losses.

``python -m ptuning_v2.evaluation.generation CONFIG --output-dir DIR`` scores the frozen backbone
with no prompt and no training on the test split (same data, templates and decoding), then trains
the configured method, and writes both test results side by side in ``DIR/comparison.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sacrebleu
import torch
from rouge_score import rouge_scorer

from ptuning_v2.config import RunConfig
from ptuning_v2.utils.io import write_json_atomic

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU, ROUGE-1/2/L (F, stemmed) and the mean length in words of the predictions."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {"bleu": 0.0, **dict.fromkeys(ROUGE_TYPES, 0.0), "gen_words": 0.0}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = len(predictions)
    return {
        "bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score),
        **{name: 100.0 * total / n for name, total in totals.items()},
        "gen_words": sum(len(p.split()) for p in predictions) / n,
    }


def evaluate_untuned(run: RunConfig, output_dir: str | Path) -> dict[str, Any]:
    """Test metrics of the frozen backbone alone (no prompt, no training) under ``run``'s task and data."""
    from ptuning_v2.data import DataError
    from ptuning_v2.evaluation.runner import evaluate_split
    from ptuning_v2.methods.registry import freeze
    from ptuning_v2.models import load_backbone, load_tokenizer
    from ptuning_v2.tasks import get_task
    from ptuning_v2.training.recipe import load_splits

    task_cls = get_task(run.task)
    splits = load_splits(run, task_cls)
    if "test" not in splits:
        raise DataError("the untuned baseline is scored on the test split, and the data has none")
    tokenizer = load_tokenizer(run.model)
    task = task_cls(run, tokenizer)
    task.prepare(splits)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = load_backbone(run.model, task_cls.backbone_kind, options=run.model_options)
    model = task.build_model(freeze(backbone)).to(device)
    features = task.featurize(splits["test"], "test")
    metrics = {
        "method": "untuned",
        "task": run.task,
        "model": run.model,
        "data": run.data.name or run.data.train,
        "test": evaluate_split(task, model, splits["test"], features, run.train.eval_batch_size, device),
        "trainable_params": 0,
    }
    write_json_atomic(Path(output_dir) / "metrics.json", metrics)
    return metrics


def compare_untuned(run: RunConfig, output_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """The untuned backbone, then ``run`` trained; both metrics side by side in ``comparison.json``."""
    from ptuning_v2.training.recipe import train_run

    output_dir = Path(output_dir)
    untuned = evaluate_untuned(run, output_dir / "untuned")
    tuned = train_run(run, output_dir / run.method, show_progress=show_progress, overwrite=True)
    rows = {"untuned": untuned, run.method: tuned}
    report = {
        "model": run.model,
        "task": run.task,
        "data": run.data.name or run.data.train,
        "runs": {
            name: {
                "test": m["test"],
                "trainable_params": m["trainable_params"],
                "train_seconds": m.get("train_seconds", 0.0),
                "steps": m.get("steps", 0),
            }
            for name, m in rows.items()
        },
    }
    write_json_atomic(output_dir / "comparison.json", report)
    return report


def format_comparison(report: dict[str, Any]) -> str:
    keys = ("rougeL", "rouge1", "rouge2", "bleu", "perplexity", "gen_words")
    lines = [
        f"{report['model']} on {report['data']} ({report['task']}), test split",
        f"{'run':12} " + " ".join(f"{k:>10}" for k in keys) + f" {'train s':>8}",
    ]
    for name, row in report["runs"].items():
        values = " ".join(f"{row['test'].get(k, float('nan')):10.2f}" for k in keys)
        lines.append(f"{name:12} {values} {row['train_seconds']:8.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from ptuning_v2.config import load_run_config

    parser = argparse.ArgumentParser(
        prog="python -m ptuning_v2.evaluation.generation",
        description="untuned backbone vs the trained method on a generation task (test metrics)",
    )
    parser.add_argument("config", help="YAML run config (task causal_lm or seq2seq)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run = load_run_config(args.config, args.overrides)
    report = compare_untuned(run, args.output_dir, show_progress=not args.no_progress)
    print(format_comparison(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
