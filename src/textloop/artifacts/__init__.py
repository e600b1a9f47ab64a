"""What outlives a run: the run-folder layout and the checks before one is replaced."""
