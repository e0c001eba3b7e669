"""The one progress-bar and chunking helper for loops over examples (collect, evaluate).

tqdm is optional (the ``eval``/``train`` extras bring it): without it, or with
``enabled=False``, :func:`progress_bar` returns a bar that does nothing, so
callers never branch on it.

Example:
    >>> with progress_bar(10, desc="eval", enabled=False) as bar:
    ...     for chunk in chunks(list(range(10)), 4):
    ...         bar.update(len(chunk))

"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["chunks", "progress_bar"]

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield consecutive slices of ``items`` of at most ``size`` elements."""
    if size < 1:
        msg = f"chunk size must be >= 1, got {size}."
        raise ValueError(msg)
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _NoBar:
    """Stands in for a tqdm bar when progress is off or tqdm is missing."""

    def update(self, n: int = 1) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress_bar(total: int, *, desc: str, enabled: bool = True, initial: int = 0) -> Any:
    """Return a tqdm bar over ``total`` questions (a no-op bar when disabled or without tqdm)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="q")
