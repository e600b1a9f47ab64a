"""Tasks: each module owns preprocessing, head, batching, loss, metrics and prediction."""
