"""The ner task: see task.py (the Task, build_splits, task_from_state)."""
