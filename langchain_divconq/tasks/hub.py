"""Fetch task data from the Hugging Face hub into the local data layout (needs internet).

Tasks read a folder laid out like ``../shared/data``; :func:`download_task_data`
fills such a folder from the hub with ``datasets``, so every task keeps a single
loading path and an offline copy after the first download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_divconq.jsonl import write_jsonl
from langchain_divconq.local.embedded import cache_dir

__all__ = ["HUB_SOURCES", "default_hub_data_dir", "download_task_data"]

HUB_SOURCES: dict[str, list[tuple[str, str | None, str, str]]] = {
    # task: [(hub dataset id, config, hub split, local file name)]
    "gsm8k": [
        ("openai/gsm8k", "main", "train", "train.jsonl"),
        ("openai/gsm8k", "main", "test", "test.jsonl"),
        ("openai/gsm8k", "socratic", "train", "train_socratic.jsonl"),
        ("openai/gsm8k", "socratic", "test", "test_socratic.jsonl"),
    ],
}
"""Hub datasets whose rows already have the local files' fields (question, answer)."""


def default_hub_data_dir() -> Path:
    """Return where hub downloads are kept: ``<cache>/data``."""
    return cache_dir() / "data"


def download_task_data(name: str, data_dir: str | Path | None = None) -> Path:
    """Download a task's files from the hub into ``data_dir`` (default: the cache) once.

    Returns the data root, ready for ``load_task(name, data_dir=root)``.

    Example:
        >>> root = download_task_data("gsm8k")  # doctest: +SKIP
        >>> load_task("gsm8k", split="test", data_dir=root)  # doctest: +SKIP

    """
    key = name.strip().lower()
    if key not in HUB_SOURCES:
        msg = (
            f"No hub source is known for task {name!r} (known: {sorted(HUB_SOURCES)}). "
            "Put its files in a folder laid out like ../shared/data and pass --data-dir."
        )
        raise ValueError(msg)
    root = Path(data_dir) if data_dir is not None else default_hub_data_dir()
    folder = root / key
    missing = [entry for entry in HUB_SOURCES[key] if not (folder / entry[3]).is_file()]
    if not missing:
        return root
    try:
        from datasets import load_dataset
    except ImportError as exc:
        msg = "Downloading task data needs 'datasets': pip install 'langchain-divconq[train]'."
        raise ImportError(msg) from exc
    folder.mkdir(parents=True, exist_ok=True)
    for hub_id, config, split, filename in missing:
        rows: Any = load_dataset(hub_id, config, split=split)
        # Whole files only: an interrupted download is redone.
        write_jsonl(folder / filename, (dict(row) for row in rows))
    return root
