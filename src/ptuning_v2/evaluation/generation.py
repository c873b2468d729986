"""Metrics of generated text, from the standard packages.

BLEU is sacrebleu's corpus BLEU (13a tokenisation); ROUGE-1/2/L are rouge-score's F-measures with
Porter stemming, averaged over examples. All three are on a 0-100 scale, as papers report them.
Perplexity (exp of the mean negative log-likelihood per target token) comes from the task, which
has the teacher-forced losses. The untuned-backbone baseline is an experiment:
``ptv2 compare CONFIG --methods untuned,ptuning_v2`` (ptuning_v2/experiments/untuned.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer

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
