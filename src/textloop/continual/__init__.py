"""Keep learning: traffic and feedback store, drift tests, replay, retraining with a gate.

- ``textloop.artifacts.feedback.FeedbackStore``: predictions and labelled feedback in SQLite (WAL)
  beside a registry (an artifact: the server writes it, updates read it).
- ``monitor.check_drift``: input / prediction / confidence drift of recent traffic.
- ``update.update``: retrain (naive, replay, EWC, LwF), gate, register, promote or keep.
"""
