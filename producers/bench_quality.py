"""`dcr bench quality` (being written)."""
from __future__ import annotations


def cli() -> None:
    """Not written yet."""
    raise SystemExit("dcr bench quality: not implemented yet")
