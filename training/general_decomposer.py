"""Train the general decomposer: GSM8K, StrategyQA and Break (HotpotQA, CWQ) gold plans.

    python training/general_decomposer.py --dry-run                  # the data, tokens, time
    python training/general_decomposer.py                            # the whole recipe (resumes)
    python training/general_decomposer.py --total 2400 --install     # a stratified subset
    python training/general_decomposer.py --install-from CHECKPOINT  # ship a chosen step

Training data, from TRAIN splits only (never GSM8K test, StrategyQA dev, Bamboogle, DROP,
or the HotpotQA rows of Break held out as the ``hotpotqa`` task's ``heldout`` split):

* ``gsm8k``: every GSM8K Socratic train question; its sub-questions deduplicated and,
  when there are more than 3, capped with ``keep="spread"`` (first step, last step,
  and evenly spaced ones between).
* ``strategyqa``: every StrategyQA train question whose plan reads as standalone
  questions: plans longer than 3 keep the last step and the steps it depends on, then
  ``#k`` becomes the words of step k (``tasks.plans.rewrite_plan``: "Is the date Bitcoin
  was launched prior to the date the Louisiana Purchase took place?"), never "the answer
  to question k".
* ``break``: Break's ComplexWebQuestions rows and HotpotQA ``train`` rows, their phrase
  plans rewritten into questions the same way (plans of more than 3 steps are left out).
* ``none``: NO_SUBQUESTIONS targets for genuinely one-step questions only: Break and
  StrategyQA questions whose gold plan has a single step, and GSM8K train questions cut
  to their statements plus their first Socratic sub-question when that step is a single
  calculation on given numbers.

The strata are mixed by ``--weights``; a smaller stratum is repeated to reach its share,
and every prefix of the mix keeps the proportions, so a run stopped at any checkpoint saw
the intended mix. ``--total 0`` (the default) draws every GSM8K row once at its weight.
The ``none`` share (5%) follows the held-out sets' share of one-step gold plans (GSM8K
test 0%, StrategyQA dev 0.8%, HotpotQA heldout 8.5%) and stays under the 10% decline
budget. 5% of the train questions of each source are held out for the eval loss.
Before training, the script prints the recipe's token count and the expected wall time
at ``--expected-tokens-per-s``.
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

from langchain_divconq.tasks import break_plans, rewrite_plan
from langchain_divconq.tracing.importers import import_gsm8k_socratic
from langchain_divconq.training import DistillConfig, distill
from langchain_divconq.training.config import add_config_arguments, config_from_args
from langchain_divconq.training.dataset import (
    cap_sub_questions,
    dataset_hash,
    decomposer_example,
    mix_examples,
    select_examples,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PACKAGE_ADAPTER = ROOT / "langchain_divconq" / "local" / "adapters" / "general-decomposer"
SHIPPED_FILES = ("adapter_config.json", "adapter_model.safetensors", "divconq_adapter.json")
DEFAULT_WEIGHTS = "gsm8k=0.55,strategyqa=0.17,break=0.23,none=0.05"
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


def strategyqa_plans(path: Path) -> list[tuple[str, list[str]]]:
    """(question, plan) pairs of a StrategyQA file, capped at 3 steps and rewritten in words."""
    pairs: list[tuple[str, list[str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        steps = [" ".join(str(q).split()) for q in row["decomposition"] if str(q).strip()]
        capped = cap_sub_questions(steps, MAX_SUB_QUESTIONS, keep="spread")
        plan = rewrite_plan(capped)
        if plan:
            pairs.append((" ".join(str(row["question"]).split()), plan))
    return pairs


def build_strata(
    data: Path, val_fraction: float, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Return (train strata, validation strata), split by source question."""
    gsm8k_path = data / "gsm8k" / "train_socratic.jsonl"
    gsm8k = select_examples(
        import_gsm8k_socratic(gsm8k_path), max_sub_questions=MAX_SUB_QUESTIONS, keep="spread"
    )
    strata: dict[str, list[dict[str, Any]]] = {"gsm8k": gsm8k, "strategyqa": [], "break": []}
    none: list[dict[str, Any]] = []
    sources = (
        ("strategyqa", strategyqa_plans(data / "strategyqa" / "train.jsonl")),
        ("break", [(q, p) for q, p in break_plans(data) if len(p) <= MAX_SUB_QUESTIONS]),
    )
    for name, pairs in sources:
        for question, plan in pairs:
            if len(plan) == 1:
                none.append({**decomposer_example(question, []), "source_question": question})
            else:
                strata[name].append(decomposer_example(question, plan))
    for question, source in gsm8k_one_step(gsm8k_path):
        none.append({**decomposer_example(question, []), "source_question": source})

    held = set()
    for rows in strata.values():
        held |= _held_out([e["question"] for e in rows], val_fraction, seed)
    train: dict[str, list[dict[str, Any]]] = {name: [] for name in (*strata, "none")}
    val: dict[str, list[dict[str, Any]]] = {name: [] for name in (*strata, "none")}
    for name, rows in strata.items():
        for row in rows:
            (val if row["question"] in held else train)[name].append(row)
    for row in none:
        source = row.pop("source_question")
        (val if source in held else train)["none"].append(row)
    return train, val


def recipe_tokens(rows: list[dict[str, Any]], base_model: str | None) -> int:
    """Tokens the trainer will see: each prompt + completion through the chat template."""
    from transformers import AutoTokenizer

    from langchain_divconq.local.embedded import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(base_model))
    total = 0
    for row in rows:
        text = tokenizer.apply_chat_template([*row["prompt"], *row["completion"]], tokenize=False)
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return total


def parse_weights(text: str) -> dict[str, float]:
    """``"a=0.5,b=0.5"`` -> ``{"a": 0.5, "b": 0.5}``."""
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        weights[name.strip()] = float(value)
    return weights


def _checkpoint_metadata(run: dict[str, Any], source: Path) -> dict[str, Any]:
    """The run's metadata, with the step, losses and tokens of the checkpoint ``source``."""
    state_file = source / "trainer_state.json"
    if not state_file.is_file():  # the run's own final folder
        return run
    state = json.loads(state_file.read_text(encoding="utf-8"))
    history = state["log_history"]
    losses = [float(h["loss"]) for h in history if "loss" in h]
    step = state["global_step"]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h and h["step"] == step]
    seen = [h["num_input_tokens_seen"] for h in history if "num_input_tokens_seen" in h]
    return {
        **run,
        "global_step": int(state["global_step"]),
        "epochs": float(state["epoch"]),
        "train_loss": sum(losses) / len(losses) if losses else None,
        "last_train_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None,
        "train_tokens": seen[-1] if seen else None,
        # The run's last session, not this step's: the run is described below.
        "resumed_from": None,
        "train_runtime_s": None,
        "train_tokens_per_s": None,
        "checkpoint_of_run": {"steps": run["global_step"], "eval_loss": run["eval_loss"]},
    }


def relative_selection(selection: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``selection.json`` with every adapter named by its checkpoint (no local paths)."""

    def name(path: str) -> str:
        folder = Path(path)
        if folder.name.startswith("checkpoint-"):
            return folder.name
        return "final" if folder.resolve() == run_dir.resolve() else folder.name

    rows = [{**row, "adapter": name(row["adapter"])} for row in selection["rows"]]
    return {**selection, "chosen": name(selection["chosen"]), "rows": rows}


def install(source: Path, run_dir: Path, dest: Path) -> None:
    """Ship ``source`` (the run folder or one of its checkpoints) as an adapter folder ``dest``.

    The weights are stored in the run's ``save_dtype``, the adapter config names the base
    model by its hub id (never a local path), and the metadata is the run's, with the
    checkpoint's step and losses, and the held-out selection when ``selection.json`` exists.
    """
    from langchain_divconq.training import METADATA_FILE, read_metadata
    from langchain_divconq.training.distillation import write_adapter_files

    run = read_metadata(run_dir)
    metadata = _checkpoint_metadata(run, source)
    selection = run_dir / "selection.json"
    if selection.is_file():
        # Older selection files named candidates by path.
        chosen = json.loads(selection.read_text(encoding="utf-8"))
        metadata["selected_by"] = relative_selection(chosen, run_dir)
    save_dtype = run["config"]["save_dtype"]
    write_adapter_files(source, dest, save_dtype=save_dtype, base_model=run["base_model"])
    (dest / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    print(f"installed step {metadata['global_step']} of {source} into {dest}")


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
    parser.add_argument(
        "--expected-tokens-per-s",
        type=float,
        default=330.0,
        help="trainer speed for the printed wall-time estimate (measured: about 330 tokens/s on "
        "a 2-core AVX512-BF16 CPU, BENCHMARKS.md)",
    )
    parser.add_argument("--dry-run", action="store_true", help="build and describe the data only")
    parser.add_argument("--install", action="store_true", help="copy the adapter into the package")
    parser.add_argument(
        "--install-from",
        default=None,
        help="ship this checkpoint of the run (the step select_checkpoint.py chose), no training",
    )
    parser.add_argument("--install-to", default=str(PACKAGE_ADAPTER), help="where to ship it")
    add_config_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config: DistillConfig = config_from_args(args, args.config)
    if args.install_from:
        install(Path(args.install_from), Path(config.output_dir), Path(args.install_to))
        return
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
        sample = next((r for r in mixed if r["stratum"] == name), None)
        if sample is not None:
            target = sample["completion"][0]["content"]
            print(f"  [{name}] {sample['question'][:90]!r} -> {target!r}")
    tokens = recipe_tokens(mixed, config.base_model)
    epochs = config.num_epochs if config.max_steps < 0 else None
    steps = config.max_steps if epochs is None else -(-len(mixed) // config.batch_size)
    seen = tokens * (epochs or 1) if epochs else tokens * steps * config.batch_size / len(mixed)
    hours = seen / args.expected_tokens_per_s / 3600
    print(
        f"recipe: {len(mixed)} examples, {tokens:,} tokens per epoch; this run: {seen:,.0f} "
        f"tokens, about {hours:.2f} h at {args.expected_tokens_per_s:.0f} tokens/s"
    )
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
