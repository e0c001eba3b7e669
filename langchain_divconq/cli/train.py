"""The ``divconq dataset`` and ``divconq distill`` commands (domain: :mod:`~.training`).

``divconq dataset --store traces.jsonl --variant SD-R --out data/sd-r`` writes a
training dataset (Arrow files, no pickle) plus its info file;
``divconq distill --config recipe.yaml [--flag value ...]`` trains on it, flags
overriding the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_divconq.tracing.trace import Trace

__all__ = ["register_cli"]


def _dataset(args: argparse.Namespace) -> int:
    from langchain_divconq.training.dataset import NoExamplesError, build_dataset
    from langchain_divconq.training.stores import DATASET_INFO_FILE, describe_skipped, iter_traces

    skipped: list[tuple[str, str]] = []
    read = 0

    def traces() -> Iterator[Trace]:
        nonlocal read
        for trace in iter_traces(args.store, skipped=skipped):
            read += 1
            yield trace

    try:
        ds = build_dataset(
            traces(),
            variant=args.variant,
            val_fraction=args.val_fraction,
            seed=args.seed,
            dedup=not args.no_dedup,
            max_sub_questions=args.max_sub_questions,
            max_examples=args.max_examples,
        )
    except NoExamplesError as exc:
        msg = (
            f"{exc} From {args.store}: {read} traces read, {describe_skipped(skipped)}. "
            "Nothing was written; fix or remove the skipped lines, or record more traces."
        )
        raise ValueError(msg) from exc
    if skipped:
        print(f"warning: {args.store}: {describe_skipped(skipped)}", file=sys.stderr)
    out = Path(args.out)
    ds.save_to_disk(str(out))
    info = {
        "variant": args.variant,
        "store": str(args.store),
        "splits": {name: len(split) for name, split in ds.items()},
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "traces_read": read,
        "lines_skipped": len(skipped),
    }
    (out / DATASET_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    counts = ", ".join(f"{n} {name}" for name, n in info["splits"].items())
    print(f"{args.variant}: {counts} examples -> {out}")
    return 0


def _load_dataset(folder: Path) -> Any:
    """Load a saved dataset; one without rows is a clear error (``datasets`` raises IndexError)."""
    from datasets import load_from_disk

    from langchain_divconq.training.stores import DATASET_INFO_FILE

    empty = (
        f"Dataset {str(folder)!r} has no rows in its train split, so there is nothing to "
        "distill; rebuild it with `divconq dataset` from a store with usable traces."
    )
    info_path = folder / DATASET_INFO_FILE
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = f"{info_path} is not valid JSON ({exc}); rebuild the dataset."
            raise ValueError(msg) from exc
        if isinstance(info, dict) and (info.get("splits") or {}).get("train") == 0:
            raise ValueError(empty)
    try:
        return load_from_disk(str(folder))
    except IndexError as exc:  # a split saved with no rows has no shards to read
        raise ValueError(empty) from exc


def _distill(args: argparse.Namespace) -> int:
    from langchain_divconq.training.config import config_from_args
    from langchain_divconq.training.distillation import distill
    from langchain_divconq.training.stores import DATASET_INFO_FILE

    logging.getLogger("langchain_divconq").setLevel(logging.INFO)
    # A bare --config name is a packaged recipe (training/recipes.py), usable after pip.
    from langchain_divconq.training.recipes import find_recipe, resolve_recipe_paths

    config = resolve_recipe_paths(config_from_args(args, find_recipe(args.config)))
    if not config.dataset:
        msg = "No dataset given: set 'dataset:' in the config file or pass --dataset DIR."
        raise ValueError(msg)
    folder = Path(config.dataset)
    if not folder.is_dir():
        msg = f"Dataset folder {str(folder)!r} does not exist; build it with `divconq dataset`."
        raise FileNotFoundError(msg)
    dataset = _load_dataset(folder)
    info_path = folder / DATASET_INFO_FILE
    if info_path.is_file():
        info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("variant") and info["variant"] != config.variant:
            # The data decides what was distilled; the metadata must say so.
            config = dataclasses.replace(config, variant=info["variant"])
    out = distill(config, dataset)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun/accelerate only the main process writes and reports
    meta = json.loads((out / "divconq_adapter.json").read_text(encoding="utf-8"))
    print(
        f"adapter -> {out} (variant {meta['variant']}, {meta['global_step']} steps, "
        f"train loss {meta['train_loss']}, eval loss {meta['eval_loss']}, "
        f"{meta['train_tokens_per_s']} tokens/s)"
    )
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``dataset`` and ``distill`` sub-commands to the ``divconq`` parser."""
    from langchain_divconq.training.config import add_config_arguments
    from langchain_divconq.training.dataset import VARIANTS

    ds = subparsers.add_parser(
        "dataset",
        help="build a training dataset (SD-T/SD-R/SE-T/SE-A) from a trace store",
        description="Turn recorded traces into TRL prompt/completion pairs for one variant.",
    )
    ds.add_argument(
        "--store", required=True, help="trace store: traces.jsonl or sqlite:///traces.db"
    )
    ds.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    ds.add_argument("--out", required=True, help="folder to write the dataset into")
    ds.add_argument("--val-fraction", type=float, default=0.05, help="questions held out")
    ds.add_argument("--seed", type=int, default=0, help="seed of the split")
    ds.add_argument("--no-dedup", action="store_true", help="keep repeated pairs")
    ds.add_argument("--max-sub-questions", type=int, default=3)
    ds.add_argument("--max-examples", type=int, default=None, help="cap the train split")
    ds.set_defaults(handler=_dataset)

    dist = subparsers.add_parser(
        "distill",
        help="train a LoRA adapter on a dataset (flags override the --config file)",
        description="LoRA distillation with TRL's SFTTrainer; loss on the completion only.",
    )
    dist.add_argument(
        "--config",
        default=None,
        help="YAML file of DistillConfig fields, or a packaged recipe's name (e.g. sd_r)",
    )
    from langchain_divconq.training.recipes import add_recipe_arguments

    add_recipe_arguments(dist)  # --list-recipes
    add_config_arguments(dist)
    dist.set_defaults(handler=_distill)
