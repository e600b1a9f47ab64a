"""What outlives a run, used from above by training, serving and continual alike.

- ``rundir``: the run-folder layout and the checks before one is replaced;
- ``registry``: named, versioned, stage-tracked copies of runs (SQLite), verified by ``integrity``
  (sha256 of every file, no links, no pickles); loading a version is ``runs.load_registered``;
- ``feedback``: the served predictions and the labelled feedback (SQLite, WAL).
"""
