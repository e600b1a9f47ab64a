"""Hyper-parameter search on a time budget (Optuna), through the training driver: ``tune``."""
