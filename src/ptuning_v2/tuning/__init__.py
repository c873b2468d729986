"""Hyper-parameter search (``ptv2 tune``): Optuna studies over per-method search spaces."""
