"""Fetch task data from the Hugging Face hub into the local data layout (needs internet).

Tasks read a folder laid out like ``../shared/data``; :func:`download_task_data`
fills such a folder from the hub with ``datasets``, so every task keeps a single
loading path and an offline copy after the first download.

Each local file is built from one or more hub splits, whose rows are mapped to the
local files' fields (see ``../shared/data/README.md``):

========== ============================================ ====================================
task       hub dataset (split)                          local file
========== ============================================ ====================================
gsm8k      ``openai/gsm8k`` main/socratic (train, test) ``train.jsonl``, ``test.jsonl``, ...
drop       ``ucinlp/drop`` (validation)                 ``dev.jsonl``
bamboogle  ``chiayewken/bamboogle`` (test)              ``bamboogle.jsonl``
svamp      ``ChilleD/SVAMP`` (train + test)             ``svamp.jsonl`` (all 1,000)
multiarith ``ChilleD/MultiArith`` (train + test)        ``multiarith.jsonl`` (all 600)
strategyqa ``wics/strategy-qa`` (test: 2,290 labelled)  ``train.jsonl``, ``dev.jsonl``
========== ============================================ ====================================

Only the GSM8K source has been downloaded and checked against the local copy.
The other five were written from the datasets' published cards and field names
and tested against mocked rows only (no network here): if a hub dataset has
changed its fields, :func:`download_task_data` fails naming the missing field.
They differ from the local copies in known ways: DROP has one gold answer per
question (the local simple-evals copy also accepts DROP's validated alternatives);
StrategyQA's train/dev split is drawn here (a stable hash of each question id puts
about 500 of the 2,290 questions in ``dev``), not the Faithful-CoT split of the
local copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_divconq.jsonl import write_jsonl
from langchain_divconq.local.embedded import cache_dir

__all__ = ["HUB_SOURCES", "HubFile", "default_hub_data_dir", "download_task_data"]

Row = dict[str, Any]


@dataclass(frozen=True)
class HubFile:
    """One local data file and the hub split(s) it is made from.

    Attributes:
        filename: The file's name in the task folder (``dev.jsonl``).
        sources: ``(hub dataset id, config or None, split)`` triples; their rows are
            concatenated in this order.
        convert: Maps one hub row (and its index in the file) to a local row; None
            keeps the row as it is.
        keep: Selects rows (after ``convert``) for this file; None keeps all.

    """

    filename: str
    sources: tuple[tuple[str, str | None, str], ...]
    convert: Callable[[Row, int], Row] | None = None
    keep: Callable[[Row], bool] | None = None


def _field(row: Mapping[str, Any], name: str, hub_id: str) -> Any:
    if name not in row:
        msg = (
            f"Hub dataset {hub_id!r} has no field {name!r} (fields: {sorted(row)}); it may "
            "have changed. Download the data yourself into the local layout "
            "(../shared/data/README.md) and pass --data-dir."
        )
        raise ValueError(msg)
    return row[name]


def _number(value: Any) -> int | float:
    """Return a gold number as the local files keep it: an int when integral."""
    number = float(str(value).replace(",", ""))
    return int(number) if number.is_integer() else number


def _drop(row: Row, index: int) -> Row:
    spans = _field(row, "answers_spans", "ucinlp/drop")
    parts = [str(s).strip() for s in (spans.get("spans") or []) if str(s).strip()]
    # A multi-span answer is one answer, joined as the local (simple-evals) file joins it.
    answer = " and ".join(parts)
    return {
        "id": str(row.get("query_id", index)),
        "question": str(_field(row, "question", "ucinlp/drop")),
        "passage": str(_field(row, "passage", "ucinlp/drop")),
        "answer": answer,
        "answers": [answer],
        "section_id": row.get("section_id"),
    }


def _bamboogle(row: Row, index: int) -> Row:
    return {
        "id": index,
        "question": str(_field(row, "Question", "chiayewken/bamboogle")).strip(),
        "answer": str(_field(row, "Answer", "chiayewken/bamboogle")).strip(),
        "answer_alternatives": [],
    }


def _svamp(row: Row, index: int) -> Row:
    body = str(_field(row, "Body", "ChilleD/SVAMP")).strip()
    question = str(_field(row, "Question", "ChilleD/SVAMP")).strip()
    return {
        **row,
        "id": str(row.get("ID", index)),
        "question": f"{body} {question}",
        "answer": _number(_field(row, "Answer", "ChilleD/SVAMP")),
    }


def _multiarith(row: Row, index: int) -> Row:
    return {
        **row,
        "id": index,
        "question": str(_field(row, "question", "ChilleD/MultiArith")).strip(),
        "answer": _number(_field(row, "final_ans", "ChilleD/MultiArith")),
    }


def _strategyqa(row: Row, index: int) -> Row:
    answer = _field(row, "answer", "wics/strategy-qa")
    return {
        "question": str(_field(row, "question", "wics/strategy-qa")),
        "answer": answer if isinstance(answer, bool) else str(answer).lower() in ("true", "yes"),
        "id": str(row.get("qid", index)),
        "term": row.get("term"),
        "description": row.get("description"),
        "facts": list(row.get("facts") or []),
        "decomposition": list(_field(row, "decomposition", "wics/strategy-qa") or []),
    }


_STRATEGYQA_DEV_PER_MILLE = 218
"""About 500 of StrategyQA's 2,290 labelled questions go to ``dev`` (as in the local split)."""


def _strategyqa_dev(row: Row) -> bool:
    digest = hashlib.sha256(str(row["id"]).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 1000 < _STRATEGYQA_DEV_PER_MILLE


_STRATEGYQA = (("wics/strategy-qa", None, "test"),)

HUB_SOURCES: dict[str, list[HubFile]] = {
    "gsm8k": [
        HubFile("train.jsonl", (("openai/gsm8k", "main", "train"),)),
        HubFile("test.jsonl", (("openai/gsm8k", "main", "test"),)),
        HubFile("train_socratic.jsonl", (("openai/gsm8k", "socratic", "train"),)),
        HubFile("test_socratic.jsonl", (("openai/gsm8k", "socratic", "test"),)),
    ],
    "drop": [HubFile("dev.jsonl", (("ucinlp/drop", None, "validation"),), _drop)],
    "bamboogle": [
        HubFile("bamboogle.jsonl", (("chiayewken/bamboogle", None, "test"),), _bamboogle)
    ],
    "svamp": [
        HubFile(
            "svamp.jsonl",
            (("ChilleD/SVAMP", None, "train"), ("ChilleD/SVAMP", None, "test")),
            _svamp,
        )
    ],
    "multiarith": [
        HubFile(
            "multiarith.jsonl",
            (("ChilleD/MultiArith", None, "train"), ("ChilleD/MultiArith", None, "test")),
            _multiarith,
        )
    ],
    "strategyqa": [
        HubFile("train.jsonl", _STRATEGYQA, _strategyqa, lambda row: not _strategyqa_dev(row)),
        HubFile("dev.jsonl", _STRATEGYQA, _strategyqa, _strategyqa_dev),
    ],
}
"""Per task, the local files and the hub splits each is built from (see the module doc)."""


def default_hub_data_dir() -> Path:
    """Return where hub downloads are kept: ``<cache>/data``."""
    return cache_dir() / "data"


def _rows(entry: HubFile, fetch: Callable[[str, str | None, str], list[Row]]) -> Iterable[Row]:
    index = 0
    for hub_id, config, split in entry.sources:
        for row in fetch(hub_id, config, split):
            converted = entry.convert(row, index) if entry.convert else row
            index += 1
            if entry.keep is None or entry.keep(converted):
                yield converted


def download_task_data(name: str, data_dir: str | Path | None = None) -> Path:
    """Download a task's files from the hub into ``data_dir`` (default: the cache) once.

    Returns the data root, ready for ``load_task(name, data_dir=root)``. Files are
    written whole (an interrupted download is redone), and each hub split is
    downloaded once even when several files are made from it.

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
    missing = [entry for entry in HUB_SOURCES[key] if not (folder / entry.filename).is_file()]
    if not missing:
        return root
    try:
        from datasets import load_dataset
    except ImportError as exc:
        msg = "Downloading task data needs 'datasets': pip install 'langchain-divconq[train]'."
        raise ImportError(msg) from exc
    fetched: dict[tuple[str, str | None, str], list[Row]] = {}

    def fetch(hub_id: str, config: str | None, split: str) -> list[Row]:
        if (hub_id, config, split) not in fetched:
            rows = load_dataset(hub_id, config, split=split)
            fetched[hub_id, config, split] = [dict(row) for row in rows]
        return fetched[hub_id, config, split]

    folder.mkdir(parents=True, exist_ok=True)
    for entry in missing:
        write_jsonl(folder / entry.filename, list(_rows(entry, fetch)))
    return root
