"""Experiments built from training runs: method comparisons (``ptv2 compare``, ``ptv2 demo``) and the
untuned baseline, through one runner (runner.py) and one table printer (report.py).

Metrics themselves live in :mod:`ptuning_v2.evaluation`, which knows nothing of training.
"""

UNTUNED = "untuned"
"""The untuned baseline's name among ``ptv2 compare``'s methods: the frozen backbone scored on test with
no prompt and no training (untuned.py). It is a reference row, not a fine-tuning method of the registry."""
