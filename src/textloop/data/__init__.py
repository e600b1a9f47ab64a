"""Data: readers, builtin datasets, column selection, splits and batching."""

from textloop.data.readers import Table, read_table

__all__ = ["Table", "read_table"]
