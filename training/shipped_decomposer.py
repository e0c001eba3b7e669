"""Reproduce the shipped GSM8K decomposer adapter (SD-T on the gold Socratic decompositions).

    python training/shipped_decomposer.py --examples 1000 --install

Imports GSM8K train_socratic as traces, builds an SD-T dataset (5% of the train
questions held out for the eval loss; the test split is never touched), trains
with ``distill`` and, with ``--install``, copies the adapter into
``langchain_divconq/local/adapters/gsm8k-decomposer/`` where ``load_decomposer()`` finds it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from langchain_divconq.tracing.importers import import_gsm8k_socratic
from langchain_divconq.tracing.trace import Trace
from langchain_divconq.training import DistillConfig, build_dataset, distill
from langchain_divconq.training.config import add_config_arguments, config_from_args

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train_socratic.jsonl"
PACKAGE_ADAPTER = ROOT / "langchain_divconq" / "local" / "adapters" / "gsm8k-decomposer"
SHIPPED_FILES = ("adapter_config.json", "adapter_model.safetensors", "divconq_adapter.json")


def load_traces(path: Path = DATA) -> Iterator[Trace]:
    """Yield GSM8K Socratic train examples as gold traces (score 1.0: the gold plan is right)."""
    return import_gsm8k_socratic(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "training" / "shipped_decomposer.yaml"))
    parser.add_argument("--data", default=str(DATA), help="GSM8K train_socratic.jsonl")
    parser.add_argument("--examples", type=int, default=800, help="training examples used")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--install", action="store_true", help="copy the adapter into the package")
    add_config_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config: DistillConfig = config_from_args(args, args.config)
    dataset = build_dataset(
        load_traces(Path(args.data)),
        variant=config.variant,  # type: ignore[arg-type]
        val_fraction=args.val_fraction,
        seed=config.seed,
        max_examples=args.examples,
    )
    # Evaluating on all ~370 held-out questions would cost as much as training here.
    dataset["validation"] = dataset["validation"].select(range(min(32, len(dataset["validation"]))))
    print(dataset)
    folder = distill(config, dataset)
    print(json.dumps(json.loads((folder / "divconq_adapter.json").read_text()), indent=2))
    if args.install:
        PACKAGE_ADAPTER.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED_FILES:
            shutil.copy2(folder / name, PACKAGE_ADAPTER / name)
        print(f"installed into {PACKAGE_ADAPTER}")


if __name__ == "__main__":
    main()
