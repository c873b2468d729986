"""SQuAD exact match and F1, exactly as the official v1.1 and v2.0 evaluation scripts compute them.

Scores are percentages (0-100) like the official scripts print. The two scripts share the answer
normalisation; they differ on empty answers only: v2.0 drops gold answers that normalise to nothing
(an unanswerable question's gold is then ``""``) and gives F1 1 when gold and prediction are both
empty, where v1.1 gives 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, version_2: bool = False) -> float:
    """Bag-of-tokens F1 of the normalised strings."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if version_2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: Sequence[str], version_2: bool = False) -> tuple[float, float]:
    """(EM, F1) of one prediction: the best over the gold answers."""
    if version_2:
        golds = [g for g in golds if normalize_answer(g)] or [""]
    elif not golds:
        raise ValueError("SQuAD v1.1 scoring needs at least one gold answer per question")
    return (
        max(exact_match(prediction, g) for g in golds),
        max(token_f1(prediction, g, version_2) for g in golds),
    )


def squad_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], version_2: bool = False
) -> dict[str, float]:
    """``exact_match`` and ``f1`` (percent) over all questions in ``references``.

    With ``version_2`` also the official script's ``HasAns_*`` / ``NoAns_*`` split, named
    ``has_ans_*`` / ``no_ans_*``. Every question needs a prediction: a missing one is a bug upstream,
    not a zero.
    """
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[0]!r}")
    em: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid, golds in references.items():
        em[qid], f1[qid] = squad_scores(predictions[qid], golds, version_2)

    def mean(scores: dict[str, float], ids: list[str]) -> float:
        return 100.0 * sum(scores[i] for i in ids) / len(ids) if ids else 0.0

    ids = list(references)
    metrics = {"exact_match": mean(em, ids), "f1": mean(f1, ids), "total": len(ids)}
    if version_2:
        answerable = {i for i in ids if any(normalize_answer(g) for g in references[i])}
        has = [i for i in ids if i in answerable]
        no = [i for i in ids if i not in answerable]
        metrics.update(
            has_ans_exact_match=mean(em, has),
            has_ans_f1=mean(f1, has),
            has_ans_total=len(has),
            no_ans_exact_match=mean(em, no),
            no_ans_f1=mean(f1, no),
            no_ans_total=len(no),
        )
    return metrics
