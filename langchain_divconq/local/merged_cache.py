"""A cache of merged models: base + LoRA adapter, merged once and saved as plain safetensors.

Merging a LoRA adapter with peft (``PeftModel.from_pretrained(...).merge_and_unload()``)
costs seconds on a CPU (7 s for the shipped decomposer on a 2-core EPYC) plus the
import of peft itself, on every start. The merged weights are a pure function of
the base weights and the adapter files, so they are merged once, saved like the
embedded base model (a ``save_pretrained`` folder), and later loaded with
``from_pretrained`` alone.

The folder name carries a key: a SHA-256 over the adapter's files (their bytes) and
the base folder (its ``config.json`` bytes and the name, size and modification time
of each weight file). Any change to the adapter or the base gives a new key, so a
stale merged copy is never loaded; the copy for the old key is deleted when the
new one is written. Each folder also holds ``divconq_merged.json`` with the full key,
checked before use. Only a base that is a local folder can be keyed this way; for
a hub id the loader merges in memory as before.

Each copy is about the size of the base (0.5-0.65 GB for SmolLM2-135M), so the cache
is bounded: after each call of :func:`merged_model_path` the least recently used
copies beyond ``$DIVCONQ_CACHE_MAX_MERGED`` (default 4; 0 means no limit) and beyond
``$DIVCONQ_CACHE_MAX_MERGED_GB`` (no size cap unless set) are deleted
(:func:`prune_merged`). A copy this process has handed out, or one any process used
in the last minute, is never deleted. ``divconq cache list`` and ``divconq cache
clear`` show and empty the cache.

torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_divconq.local.embedded import cache_dir, folder_size

__all__ = [
    "DEFAULT_MAX_MERGED",
    "MAX_MERGED_ENV",
    "MAX_MERGED_GB_ENV",
    "MERGED_INFO_FILE",
    "MergedCopy",
    "clear_merged",
    "list_merged",
    "merged_cache_key",
    "merged_folder",
    "merged_model_path",
    "merged_root",
    "prune_merged",
]

logger = logging.getLogger(__name__)

MERGED_INFO_FILE = "divconq_merged.json"
"""The file in each merged folder that records its key, base and adapter."""

MAX_MERGED_ENV = "DIVCONQ_CACHE_MAX_MERGED"
"""Environment variable: how many merged copies to keep (0: no limit)."""

MAX_MERGED_GB_ENV = "DIVCONQ_CACHE_MAX_MERGED_GB"
"""Environment variable: a cap on the merged copies' total size in GB (unset or 0: none)."""

DEFAULT_MAX_MERGED = 4
"""Merged copies kept when ``$DIVCONQ_CACHE_MAX_MERGED`` is not set."""

_RECENT_S = 60.0
"""A copy used this recently may be loading in another process: pruning keeps it."""

_UNFINISHED_S = 3600.0
"""An unfinished merge folder older than this was left by a killed process."""

_IN_USE: set[Path] = set()
"""Merged folders handed out by this process; pruning never deletes them."""

_KEY_VERSION = "divconq-merged-v2"  # v2: the info file lists the changed tensors
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def merged_cache_key(base: str | Path, adapter: str | Path) -> str:
    """Return the hex SHA-256 that names the merged copy of ``base`` + ``adapter``.

    The adapter's files are hashed byte for byte (a few MB); the base folder by its
    ``config.json`` and the name, size and mtime of its weight files (hashing 540 MB
    of base weights on every start would cost more than the cache saves).

    Example:
        >>> merged_cache_key("base-folder", "adapter-folder")  # doctest: +SKIP
        '3f1c...'

    """
    digest = hashlib.sha256(_KEY_VERSION.encode())
    adapter_dir = Path(adapter)
    for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
        digest.update(b"\0adapter\0" + str(path.relative_to(adapter_dir)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    base_dir = Path(base)
    config = base_dir / "config.json"
    digest.update(b"\0base-config\0" + (config.read_bytes() if config.is_file() else b""))
    for path in sorted(base_dir.iterdir()):
        if path.is_file() and path.name.endswith(_WEIGHT_SUFFIXES):
            stat = path.stat()
            digest.update(
                f"\0base-weights\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
            )
    return digest.hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "model"


def merged_folder(base: str | Path, adapter: str | Path, key: str | None = None) -> Path:
    """Return the cache folder for ``base`` + ``adapter`` (it may not exist yet).

    Example:
        >>> merged_folder("b", "a", key="0" * 64).name  # doctest: +ELLIPSIS
        'b+a-...-0000000000000000'

    """
    key = key or merged_cache_key(base, adapter)
    return merged_root() / f"{_prefix(base, adapter)}{key[:16]}"


def merged_root() -> Path:
    """Return the folder that holds the merged copies: ``<cache>/merged``."""
    return cache_dir() / "merged"


def _prefix(base: str | Path, adapter: str | Path) -> str:
    # The folders' own paths are in the prefix too, so that stale-copy removal only
    # touches older versions of this very base and adapter, never another project's.
    where = hashlib.sha256(f"{Path(base).resolve()}\0{Path(adapter).resolve()}".encode())
    return f"{_safe(Path(base).name)}+{_safe(Path(adapter).name)}-{where.hexdigest()[:8]}-"


def _valid(folder: Path, key: str) -> bool:
    info = folder / MERGED_INFO_FILE
    if not (info.is_file() and (folder / "model.safetensors").is_file()):
        return False
    try:
        return bool(json.loads(info.read_text()).get("key") == key)
    except (OSError, ValueError):
        return False


def merged_model_path(base: str | Path, adapter: str | Path) -> Path:
    """Return a folder with ``base`` + ``adapter`` merged, merging and saving it once.

    The folder loads with ``AutoModelForCausalLM.from_pretrained`` (fp32 weights,
    the base's tokenizer and generation config alongside) and holds exactly the
    weights that ``merge_and_unload`` gives in memory. It is written into a
    temporary folder and renamed into place, so an interrupted merge leaves
    nothing half-written; merged copies of older versions of the same base and
    adapter are removed afterwards.

    Args:
        base: A local base-model folder (``save_pretrained`` layout).
        adapter: A peft adapter folder.

    Raises:
        ValueError: If ``base`` is not a local folder.

    Example:
        >>> folder = merged_model_path(embedded_model_path(), DEFAULT_ADAPTER_DIR)  # doctest: +SKIP

    """
    base_dir, adapter_dir = Path(base), Path(adapter)
    if not (base_dir / "config.json").is_file():
        msg = f"The merged-model cache needs a local base folder with config.json; got {base!r}."
        raise ValueError(msg)
    key = merged_cache_key(base_dir, adapter_dir)
    target = merged_folder(base_dir, adapter_dir, key)
    if _valid(target, key):
        _tidy(target, _prefix(base_dir, adapter_dir))
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from peft import PeftModel
    except ImportError as exc:
        msg = "Loading a LoRA adapter needs peft: pip install 'langchain-divconq[local]'."
        raise ImportError(msg) from exc
    logger.info("Merging adapter %s into %s once; caching it in %s", adapter_dir, base_dir, target)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merge-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "key": key,
            "base": str(base_dir.resolve()),
            "adapter": str(adapter_dir.resolve()),
            # What the adapter changed: a model sharing the base loads only these.
            "changed": _changed_tensors(base_dir, tmp),
        }
        (tmp / MERGED_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():  # a stale or broken copy under the same short name
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not _valid(target, key):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _tidy(target, _prefix(base_dir, adapter_dir))
    return target


def _tidy(folder: Path, prefix: str) -> None:
    """Mark ``folder`` used by this process (and when), then drop stale and surplus copies."""
    _IN_USE.add(folder.resolve())
    with contextlib.suppress(OSError):  # a read-only cache still serves; it cannot record use
        os.utime(folder / MERGED_INFO_FILE)
    _remove_stale(folder, prefix)
    prune_merged()


def _changed_tensors(base_dir: Path, merged_dir: Path) -> list[str]:
    """Names of the merged folder's tensors that the base lacks or holds other values for."""
    import torch
    from safetensors import safe_open

    base: dict[str, Any] = {}
    for file in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            base.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    changed = []
    for file in sorted(merged_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open objects are not mappings
                old = base.get(name)
                new = f.get_tensor(name)
                if old is None or old.shape != new.shape or not torch.equal(old.to(new.dtype), new):
                    changed.append(name)
    return changed


def _remove_stale(current: Path, prefix: str) -> None:
    """Delete merged copies of older versions of this base and adapter, and orphans.

    An orphan is a copy whose base or adapter folder no longer exists (a deleted
    checkpoint, a test's temporary folder): nothing can ask for it again.
    """
    for other in current.parent.iterdir():
        if other == current or not other.is_dir() or other.name.startswith("."):
            continue
        if other.resolve() in _IN_USE:
            continue  # this process still holds it (loaded before the adapter changed)
        stale = other.name.startswith(prefix) and len(other.name) == len(current.name)
        if not stale:
            try:
                info = json.loads((other / MERGED_INFO_FILE).read_text())
                stale = not (Path(info["base"]).is_dir() and Path(info["adapter"]).is_dir())
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours, or being written: leave it
        if stale:
            logger.info("Removing the stale merged copy %s", other)
            shutil.rmtree(other, ignore_errors=True)


@dataclass(frozen=True)
class MergedCopy:
    """One merged copy in the cache, as :func:`list_merged` reports it."""

    path: Path
    """The copy's folder."""
    size_bytes: int
    """Bytes on disk, every file in the folder (a GGUF export beside the weights too)."""
    base: str | None
    """The base-model folder it was merged from (None when its info file is unreadable)."""
    adapter: str | None
    """The adapter folder it was merged from (None when its info file is unreadable)."""
    last_used: float
    """When it was last written or loaded, in seconds since the epoch."""
    in_use: bool
    """Whether this process has loaded it (pruning never deletes those)."""


def list_merged() -> list[MergedCopy]:
    """Return the merged copies in the cache, least recently used first.

    Example:
        >>> [copy.path.name for copy in list_merged()]  # doctest: +SKIP
        ['embedded+gsm8k-decomposer-1a2b3c4d-5e6f...']

    """
    root = merged_root()
    if not root.is_dir():
        return []
    copies = []
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue  # a merge being written (".merge-*") is not a copy yet
        info_file = folder / MERGED_INFO_FILE
        try:
            info = json.loads(info_file.read_text())
            last_used = info_file.stat().st_mtime
        except (OSError, ValueError):
            info, last_used = {}, _mtime(folder)
        if not isinstance(info, dict):
            info = {}
        copies.append(
            MergedCopy(
                path=folder,
                size_bytes=folder_size(folder),
                base=info.get("base"),
                adapter=info.get("adapter"),
                last_used=last_used,
                in_use=folder.resolve() in _IN_USE,
            )
        )
    return sorted(copies, key=lambda c: (c.last_used, c.path.name))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _env_number(name: str, default: float | None, kind: type) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0:
        # A cache setting must not stop a model from loading: say so and go on.
        logger.warning(
            "$%s=%r is not a %s >= 0; using %s instead.",
            name,
            text,
            "whole number" if kind is int else "number",
            default,
        )
        return default
    return value or None  # 0 means no limit


def prune_merged(
    max_copies: int | None = None,
    max_gb: float | None = None,
    *,
    recent_s: float = _RECENT_S,
) -> list[Path]:
    """Delete the least recently used merged copies beyond a count and a size cap.

    Copies that this process has handed out, and copies used less than ``recent_s``
    seconds ago (another process may be loading them), are kept even when that
    leaves the cache over its bounds. Deleting never raises: a copy that cannot be
    removed is logged and skipped.

    Args:
        max_copies: Copies to keep; None reads ``$DIVCONQ_CACHE_MAX_MERGED``
            (default :data:`DEFAULT_MAX_MERGED`; 0 means no limit).
        max_gb: A cap on their total size in GB; None reads
            ``$DIVCONQ_CACHE_MAX_MERGED_GB`` (unset or 0: no cap).
        recent_s: Copies used within this many seconds are kept.

    Returns:
        The folders deleted.

    Example:
        >>> prune_merged(max_copies=2)  # doctest: +SKIP
        [PosixPath('.../merged/base+old-adapter-...')]

    """
    if max_copies is None:
        count = _env_number(MAX_MERGED_ENV, DEFAULT_MAX_MERGED, int)
        max_copies = None if count is None else int(count)
    if max_gb is None:
        max_gb = _env_number(MAX_MERGED_GB_ENV, None, float)
    copies = list_merged()
    total = sum(c.size_bytes for c in copies)
    left = len(copies)
    now = time.time()
    removed = []
    for copy in copies:  # oldest first
        over_count = bool(max_copies) and left > (max_copies or 0)
        over_size = bool(max_gb) and total > (max_gb or 0) * 1e9
        if not (over_count or over_size):
            break
        if copy.in_use or now - copy.last_used < recent_s:
            continue
        logger.info("Removing the merged copy %s (cache bound)", copy.path)
        shutil.rmtree(copy.path, ignore_errors=True)
        if copy.path.exists():
            logger.warning("Could not remove the merged copy %s; leaving it.", copy.path)
            continue
        removed.append(copy.path)
        total -= copy.size_bytes
        left -= 1
    return removed


def clear_merged() -> list[Path]:
    """Delete every merged copy (they are re-merged on demand), except those in use here.

    Unfinished merges (``.merge-*`` folders) left by a killed process go too.

    Returns:
        The folders deleted.

    """
    root = merged_root()
    if not root.is_dir():
        return []
    removed = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.resolve() in _IN_USE:
            continue
        if folder.name.startswith(".") and time.time() - _mtime(folder) < _UNFINISHED_S:
            continue  # possibly a merge still being written by another process
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed
