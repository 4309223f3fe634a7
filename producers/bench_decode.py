"""`dcr bench decode` (being written)."""
from __future__ import annotations


def cli() -> None:
    """Not written yet."""
    raise SystemExit("dcr bench decode: not implemented yet")
