"""The ``divconq cache`` command: list and clear the cache folder (domain: :mod:`~.local`).

``divconq cache list`` shows what the cache holds (``$DIVCONQ_CACHE`` or
``~/.cache/langchain-divconq``): the embedded model converted from GGUF, one merged
copy per base + adapter loaded (:mod:`~langchain_divconq.local.merged_cache`), GGUF
exports and downloaded data. ``divconq cache clear`` deletes the merged copies
(``--merged``, the default) or everything (``--all``); all of it is rebuilt on demand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from typing import Any

__all__ = ["register_cli"]


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _entries() -> list[dict[str, Any]]:
    """Everything under the cache folder: each merged copy, then each other top-level entry."""
    from langchain_divconq.local.embedded import cache_dir, folder_size
    from langchain_divconq.local.merged_cache import list_merged, merged_root

    rows: list[dict[str, Any]] = [
        {
            "kind": "merged",
            "path": str(copy.path),
            "size_bytes": copy.size_bytes,
            "base": copy.base,
            "adapter": copy.adapter,
            "last_used": copy.last_used,
        }
        for copy in list_merged()
    ]
    root = cache_dir()
    if not root.is_dir():
        return rows
    kinds = {"gguf": "gguf exports", "data": "downloaded data"}
    for item in sorted(root.iterdir()):
        if item == merged_root() or item.name.startswith("."):
            continue
        if (item / "model.safetensors").is_file():
            kind = "base model"  # the embedded GGUF converted once (embedded.py)
        else:
            kind = kinds.get(item.name, "other")
        rows.append(
            {
                "kind": kind,
                "path": str(item),
                "size_bytes": folder_size(item),
                "base": None,
                "adapter": None,
                "last_used": item.stat().st_mtime,
            }
        )
    return rows


def _list(args: argparse.Namespace) -> int:
    from langchain_divconq.local.embedded import cache_dir
    from langchain_divconq.local.merged_cache import (
        DEFAULT_MAX_MERGED,
        MAX_MERGED_ENV,
        MAX_MERGED_GB_ENV,
    )

    rows = _entries()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    total = sum(row["size_bytes"] for row in rows)
    print(f"cache: {cache_dir()} ({_human(total)} in {len(rows)} entries)")
    print(
        f"merged copies kept: newest ${MAX_MERGED_ENV} (default {DEFAULT_MAX_MERGED}), "
        f"size cap ${MAX_MERGED_GB_ENV} (default none)"
    )
    for row in rows:
        line = f"{row['kind']:<15} {_human(row['size_bytes']):>9}  {_when(row['last_used'])}  "
        line += row["path"]
        print(line)
        if row["kind"] == "merged":
            print(f"{'':<17}base {row['base']}\n{'':<17}adapter {row['adapter']}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from langchain_divconq.local.embedded import cache_dir, folder_size
    from langchain_divconq.local.merged_cache import clear_merged, merged_root

    root = cache_dir()
    sizes = {}
    targets = [merged_root()] if not args.all else [root]
    for target in targets:
        if target.is_dir():
            for item in target.iterdir():
                sizes[item] = folder_size(item)
    removed = clear_merged()
    if args.all and root.is_dir():
        for item in sorted(root.iterdir()):
            if item == merged_root():
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            if not item.exists():
                removed.append(item)
    freed = sum(sizes.get(path, 0) for path in removed)
    what = "everything" if args.all else "merged copies"
    print(f"removed {len(removed)} entries ({what}, {_human(freed)}) from {root}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``cache`` sub-command (``list`` and ``clear``) to the ``divconq`` parser."""
    cache = subparsers.add_parser(
        "cache",
        help="list or clear the cache (converted base model, merged adapters, GGUF, data)",
        description=(
            "The cache folder is $DIVCONQ_CACHE or ~/.cache/langchain-divconq. Merged "
            "copies (base + adapter, about the base's size each) are bounded by "
            "$DIVCONQ_CACHE_MAX_MERGED (default 4) and $DIVCONQ_CACHE_MAX_MERGED_GB."
        ),
    )
    actions = cache.add_subparsers(dest="cache_command", required=True)
    show = actions.add_parser("list", help="list the cache's entries: path, size, last used")
    show.add_argument("--json", action="store_true", help="print the entries as JSON")
    show.set_defaults(handler=_list)
    clear = actions.add_parser(
        "clear", help="delete merged copies (default) or everything; rebuilt on demand"
    )
    which = clear.add_mutually_exclusive_group()
    which.add_argument(
        "--merged", action="store_true", help="delete the merged base+adapter copies (default)"
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="delete the whole cache (the embedded model is converted again, about 30 s)",
    )
    clear.set_defaults(handler=_clear)
