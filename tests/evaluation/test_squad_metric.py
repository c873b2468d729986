"""SQuAD EM / F1: hand-checked cases, and agreement with the official scripts' own functions."""

from __future__ import annotations

import collections
import random
import re
import string
from collections import Counter

import pytest

from ptuning_v2.evaluation.squad import exact_match, normalize_answer, squad_metrics, squad_scores, token_f1


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces() -> None:
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("U.S.") == "us"
    assert (
        normalize_answer("another theme, an apple") == "another theme apple"
    )  # articles as whole words only
    assert normalize_answer("café—latte") == "café—latte"  # only ASCII punctuation goes


@pytest.mark.parametrize(
    ("prediction", "gold", "em", "f1"),
    [
        ("the Eiffel Tower", "Eiffel Tower.", 1.0, 1.0),
        # 4 predicted tokens, 2 gold, 2 shared: P = 1/2, R = 1, F1 = 2/3.
        ("Eiffel Tower in Paris", "the Eiffel Tower", 0.0, 2 / 3),
        # counts are clipped: x x y vs x y y shares one x and one y: P = R = 2/3.
        ("x x y", "x y y", 0.0, 2 / 3),
        ("1889", "in 1889", 0.0, 2 / 3),
        ("Denver", "Broncos", 0.0, 0.0),
    ],
)
def test_hand_checked_pairs(prediction, gold, em, f1) -> None:
    assert exact_match(prediction, gold) == em
    assert token_f1(prediction, gold) == pytest.approx(f1)


def test_best_over_gold_answers_and_percent_totals() -> None:
    assert squad_scores("Broncos", ["Denver Broncos", "Denver"]) == (0.0, pytest.approx(2 / 3))
    assert squad_scores("Denver Broncos", ["The Denver Broncos", "Broncos"]) == (1.0, 1.0)
    metrics = squad_metrics(
        {"q1": "Denver Broncos", "q2": "Broncos"}, {"q1": ["Denver Broncos"], "q2": ["Denver Broncos"]}
    )
    assert metrics["exact_match"] == 50.0 and metrics["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="no prediction"):
        squad_metrics({}, {"q1": ["x"]})


def test_version_2_empty_answers() -> None:
    # v1.1 gives 0 to an empty prediction of an empty gold; v2.0 gives 1 when both are empty.
    assert token_f1("", "") == 0.0 and token_f1("", "", version_2=True) == 1.0
    assert squad_scores("", [], version_2=True) == (1.0, 1.0)
    assert squad_scores("Paris", [], version_2=True) == (0.0, 0.0)
    assert squad_scores("", ["a", "Paris"], version_2=True) == (
        0.0,
        0.0,
    )  # "a" normalises away: gold is Paris
    metrics = squad_metrics({"q1": "", "q2": "Paris"}, {"q1": [], "q2": ["Paris"]}, version_2=True)
    assert metrics["has_ans_total"] == metrics["no_ans_total"] == 1 and metrics["f1"] == 100.0


# The official scripts' functions, verbatim (evaluate-v1.1.py and evaluate-v2.0.py), as the reference.
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_v1_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_v2_compute_f1(a_gold, a_pred):
    def get_tokens(s):
        if not s:
            return []
        return official_normalize_answer(s).split()

    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def test_agrees_with_the_official_functions_on_random_strings() -> None:
    rng = random.Random(0)
    pieces = [
        "the",
        "a",
        "an",
        "The",
        "Paris",
        "paris",
        "1889",
        "x",
        "y",
        ",",
        ".",
        "'s",
        "-",
        " ",
        "  ",
        "théâtre",
    ]
    for _ in range(2000):
        pred = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(0, 6)))
        gold = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(0, 6)))
        assert normalize_answer(pred) == official_normalize_answer(pred)
        assert exact_match(pred, gold) == float(
            official_normalize_answer(pred) == official_normalize_answer(gold)
        )
        assert token_f1(pred, gold) == pytest.approx(official_v1_f1_score(pred, gold))
        assert token_f1(pred, gold, version_2=True) == pytest.approx(official_v2_compute_f1(gold, pred))
