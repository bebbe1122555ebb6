"""The one exception type of the data package."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data: a missing/malformed annotation file, an unknown category or class name,
    a missing or unreadable image. The message always names the offending file (and, where it
    applies, the annotation id / class name) so the user can fix the data."""
