"""Entity-level NER metrics with seqeval, read with the tagging scheme the data uses.

IOB1 and IOB2 use seqeval's default mode, which reproduces conlleval.pl: the CoNLL-2003 standard
(and the only reading of IOB1, where ``I-`` starts an entity after ``O``). BIOES uses seqeval's
strict IOBES mode, the one mode that reads ``E-`` / ``S-`` by the scheme's rules.
"""

from __future__ import annotations

from typing import Any

from seqeval.metrics import classification_report
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOBES, Entities

from ptuning_v2.data.readers import TagScheme

_STRICT = {"BIOES": IOBES}


def seqeval_mode(scheme: TagScheme) -> str:
    return "strict" if scheme in _STRICT else "conlleval"


def entity_spans(tags: list[str], scheme: TagScheme) -> list[tuple[str, int, int]]:
    """``(type, first word, last word + 1)`` of each entity in one tag sequence, as the metric reads it."""
    if scheme in _STRICT:
        return [(e.tag, e.start, e.end) for e in Entities([tags], _STRICT[scheme]).entities[0]]
    return [(kind, start, end + 1) for kind, start, end in get_entities(list(tags))]


def ner_metrics(gold: list[list[str]], pred: list[list[str]], scheme: TagScheme) -> dict[str, Any]:
    """Micro precision / recall / F1 over entities, and the same per entity type with its support."""
    if scheme in _STRICT:
        kwargs: dict[str, Any] = {"mode": "strict", "scheme": _STRICT[scheme]}
    else:
        kwargs = {}
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "entities": int(micro["support"]),
        "scheme": scheme,
        "seqeval_mode": seqeval_mode(scheme),
        "per_type": {
            kind: {
                "precision": float(row["precision"]),
                "recall": float(row["recall"]),
                "f1": float(row["f1-score"]),
                "support": int(row["support"]),
            }
            for kind, row in sorted(report.items())
        },
    }
