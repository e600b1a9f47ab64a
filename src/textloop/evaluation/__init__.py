"""Evaluation: reports with plots (metrics live with their task)."""
