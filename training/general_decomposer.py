"""Train the general decomposer: GSM8K + StrategyQA gold plans + built one-step questions.

    python training/general_decomposer.py --total 0 --install          # all data (a GPU run)
    python training/general_decomposer.py --total 2400 --install       # a stratified CPU subset

Training data, from TRAIN splits only (never a test/dev split, never Bamboogle):

* ``gsm8k``: every GSM8K Socratic train question; its sub-questions deduplicated and,
  when there are more than 3, capped with ``keep="spread"`` (first step, last step,
  and evenly spaced ones between).
* ``strategyqa``: every StrategyQA train question; ``#k`` back-references become
  "the answer to question k" (the solver sees the plan as a numbered list); plans
  longer than 3 keep the last step and the steps it depends on, renumbered.
* ``none``: NO_SUBQUESTIONS targets for one-step questions, built two ways:
  (a) a GSM8K train question's statements followed by its *first* Socratic
  sub-question, when that step is a single calculation whose numbers all appear in
  the statements (one arithmetic step, answerable at once); (b) a StrategyQA train
  question's first sub-question when it has no back-reference (a one-hop factual
  question), plus the train questions whose gold plan has a single step.

The strata are mixed by ``--weights`` (default gsm8k 0.5, strategyqa 0.36, none
0.14); StrategyQA is repeated to reach its share, and every prefix of the mix
keeps the proportions, so a run stopped at any checkpoint saw the intended mix.
5% of the train questions of each source are held out for the eval loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from langchain_divconq.tracing.importers import import_gsm8k_socratic, import_strategyqa
from langchain_divconq.training import DistillConfig, distill
from langchain_divconq.training.config import add_config_arguments, config_from_args
from langchain_divconq.training.dataset import (
    dataset_hash,
    decomposer_example,
    mix_examples,
    resolve_back_references,
    select_examples,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PACKAGE_ADAPTER = ROOT / "langchain_divconq" / "local" / "adapters" / "general-decomposer"
SHIPPED_FILES = ("adapter_config.json", "adapter_model.safetensors", "divconq_adapter.json")
DEFAULT_WEIGHTS = "gsm8k=0.5,strategyqa=0.36,none=0.14"
MAX_SUB_QUESTIONS = 3

_CALC = re.compile(r"<<([^<>]*)>>")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SENTENCE = re.compile(r"[^.?!]*[.?!]+(?:\s+|$)")


def _held_out(questions: list[str], fraction: float, seed: int) -> set[str]:
    ordered = sorted(set(questions))
    random.Random(seed).shuffle(ordered)
    return set(ordered[: round(len(ordered) * fraction)])


def _statements(question: str) -> str | None:
    """The question without its final asking sentence, or None when it does not end in one."""
    sentences = [s.strip() for s in _SENTENCE.findall(question.strip())]
    if len(sentences) < 2 or not sentences[-1].endswith("?"):
        return None
    if any("?" in s for s in sentences[:-1]):
        return None
    return " ".join(sentences[:-1])


def gsm8k_one_step(path: Path) -> list[tuple[str, str]]:
    """(built one-step question, source question) pairs from a GSM8K Socratic file.

    The built question is the source's statements plus its first sub-question, kept
    only when the first step holds exactly one calculation and every number in it
    appears in the statements: one arithmetic step answers it.
    """
    built: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        steps = [s for s in row["answer"].split("####")[0].splitlines() if " ** " in s]
        if not steps:
            continue
        sub_question, _, step = steps[0].partition(" ** ")
        calculations = _CALC.findall(step)
        statements = _statements(row["question"])
        if len(calculations) != 1 or statements is None:
            continue
        operands = _NUMBER.findall(calculations[0].split("=")[0])
        given = set(_NUMBER.findall(statements.replace(",", "")))
        if not operands or not set(operands) <= given:
            continue
        built.append((f"{statements} {' '.join(sub_question.split())}", row["question"].strip()))
    return built


def strategyqa_one_hop(path: Path) -> list[tuple[str, str]]:
    """(one-hop question, source question) pairs from a StrategyQA file (see the module doc)."""
    built: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        steps = [" ".join(str(q).split()) for q in row["decomposition"] if str(q).strip()]
        if len(steps) == 1:
            built.append((str(row["question"]).strip(), str(row["question"]).strip()))
        elif steps and "#" not in steps[0] and len(steps[0].split()) >= 5:
            first = steps[0]
            pronoun = re.match(r"(?i)(it|they|this|that|these|those)\b", first)
            if first.endswith("?") and not pronoun:
                built.append((first, str(row["question"]).strip()))
    return built


def build_strata(
    data: Path, val_fraction: float, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Return (train strata, validation strata), split by source question."""
    gsm8k_path = data / "gsm8k" / "train_socratic.jsonl"
    sqa_path = data / "strategyqa" / "train.jsonl"
    gsm8k = select_examples(
        import_gsm8k_socratic(gsm8k_path), max_sub_questions=MAX_SUB_QUESTIONS, keep="spread"
    )
    # Resolving first would hide the references the cap needs, so cap the raw plans, then
    # resolve the kept, renumbered ones.
    raw = select_examples(
        import_strategyqa(sqa_path), max_sub_questions=MAX_SUB_QUESTIONS, keep="spread"
    )
    sqa = []
    for example in raw:
        lines = example["completion"][0]["content"].splitlines()
        resolved = resolve_back_references(lines)
        sqa.append(
            {**example, "completion": [{"role": "assistant", "content": "\n".join(resolved)}]}
        )
    none: list[dict[str, Any]] = []
    for question, source in gsm8k_one_step(gsm8k_path):
        none.append({**decomposer_example(question, []), "source_question": source, "kind": "g"})
    for question, source in strategyqa_one_hop(sqa_path):
        none.append({**decomposer_example(question, []), "source_question": source, "kind": "s"})

    held_gsm8k = _held_out([e["question"] for e in gsm8k], val_fraction, seed)
    held_sqa = _held_out([e["question"] for e in sqa], val_fraction, seed)
    held = held_gsm8k | held_sqa
    train: dict[str, list[dict[str, Any]]] = {"gsm8k": [], "strategyqa": [], "none": []}
    val: dict[str, list[dict[str, Any]]] = {"gsm8k": [], "strategyqa": [], "none": []}
    for name, rows in (("gsm8k", gsm8k), ("strategyqa", sqa)):
        for row in rows:
            (val if row["question"] in held else train)[name].append(row)
    for row in none:
        source = row.pop("source_question")
        row.pop("kind")
        (val if source in held else train)["none"].append(row)
    return train, val


def parse_weights(text: str) -> dict[str, float]:
    """``"a=0.5,b=0.5"`` -> ``{"a": 0.5, "b": 0.5}``."""
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        weights[name.strip()] = float(value)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "training" / "general_decomposer.yaml"))
    parser.add_argument("--data-dir", default=str(DATA), help="the shared data folder")
    parser.add_argument(
        "--total",
        type=int,
        default=0,
        help="training examples drawn from the mix; 0 = all GSM8K at its weight (full recipe)",
    )
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--val-examples", type=int, default=32)
    parser.add_argument("--dry-run", action="store_true", help="build and describe the data only")
    parser.add_argument("--install", action="store_true", help="copy the adapter into the package")
    add_config_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config: DistillConfig = config_from_args(args, args.config)
    if config.init_adapter and not Path(config.init_adapter).is_absolute():
        config.init_adapter = str(ROOT / config.init_adapter)
    weights = parse_weights(args.weights)
    train, val = build_strata(Path(args.data_dir), args.val_fraction, config.seed)
    total = args.total or round(len(train["gsm8k"]) / weights["gsm8k"])
    mixed = mix_examples(train, weights, total, seed=config.seed)
    val_rows = mix_examples(val, weights, args.val_examples, seed=config.seed)
    # No repeats in the validation rows.
    val_rows = list({json.dumps(r["prompt"]): r for r in val_rows}.values())
    available = {name: len(rows) for name, rows in train.items()}
    drawn = Counter(row["stratum"] for row in mixed)
    print(f"available train examples: {available}; drawn: {dict(drawn)} (total {total})")
    print(f"validation: {len(val_rows)} rows; data sha256 {dataset_hash(mixed)[:16]}")
    for name in train:
        sample = next(r for r in mixed if r["stratum"] == name)
        print(f"  [{name}] {sample['question'][:90]!r} -> {sample['completion'][0]['content']!r}")
    if args.dry_run:
        return

    from datasets import Dataset, DatasetDict

    dataset = DatasetDict(
        {"train": Dataset.from_list(mixed), "validation": Dataset.from_list(val_rows)}
    )
    folder = distill(config, dataset)
    print(json.dumps(json.loads((folder / "divconq_adapter.json").read_text()), indent=2))
    if args.install:
        PACKAGE_ADAPTER.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED_FILES:
            shutil.copy2(folder / name, PACKAGE_ADAPTER / name)
        print(f"installed into {PACKAGE_ADAPTER}")


if __name__ == "__main__":
    main()
