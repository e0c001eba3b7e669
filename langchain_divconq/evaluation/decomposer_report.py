"""A decomposer alone, task by task, beside the trivial plan: the rows of the quality table.

:func:`decomposer_summary` turns one decomposer's raw outputs on one task into the numbers
``divconq eval --decomposer-only`` prints: parse and declined rates, mean plan size (and the
gold size capped at N), repeated, self/forward-reference and content-free plans; for tasks
with gold plans the gold-averaged token F1 with its interval and the paired difference to
the trivial plan (the question's last sentence as the only sub-question); for two-hop tasks
that name their bridge entity (Bamboogle) the share of plans that ask for it first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_divconq.evaluation.plan_checks import bridge_first_plans, paired_delta
from langchain_divconq.evaluation.quality import plan_stats, quality_from_outputs, trivial_plan
from langchain_divconq.tasks import Task

__all__ = ["decomposer_summary", "summary_table"]


def decomposer_summary(
    task: Task,
    outputs: Mapping[str, str | BaseException | None],
    *,
    max_sub_questions: int = 3,
) -> dict[str, Any]:
    """Score one decomposer's outputs (by example id) on one task; see the module doc.

    Example:
        >>> from langchain_divconq.tasks import Example, GSM8KTask
        >>> task = GSM8KTask(name="gsm8k", split="test", examples=[
        ...     Example(id="0", question="Tom has 3. How many?", answer="3",
        ...             sub_questions=["How many does Tom have?"])])
        >>> row = decomposer_summary(task, {"0": "How many does Tom have?"})
        >>> row["token_f1"], row["delta_vs_trivial"] > 0
        (1.0, True)

    """
    n_max = max_sub_questions
    stats = plan_stats(task, outputs, max_sub_questions=n_max)
    row: dict[str, Any] = {
        "task": task.name,
        "split": task.split,
        "n": stats.n,
        "parse_rate": stats.parse_rate,
        "declined_rate": stats.no_decomposition_rate,
        "mean_predicted": stats.mean_predicted,
        "repeat_rate": stats.repeat_rate,
        "reference_rate": stats.reference_rate,
        "content_free_rate": stats.content_free_rate,
        "failures": stats.failures,
    }
    scored = [e for e in task.examples if e.id in outputs]
    if any(e.sub_questions for e in scored):
        quality = quality_from_outputs(task, outputs, max_sub_questions=n_max)
        trivial = quality_from_outputs(
            task, {e.id: trivial_plan(e.question) for e in scored}, max_sub_questions=n_max
        )
        delta, ci = paired_delta(
            {r.id: r.token_f1 for r in quality.records},
            {r.id: r.token_f1 for r in trivial.records},
        )
        row.update(
            token_f1=quality.token_f1,
            token_f1_ci=quality.token_f1_ci,
            trivial_token_f1=trivial.token_f1,
            delta_vs_trivial=delta,
            delta_vs_trivial_ci=ci,
            mean_gold_capped=sum(min(len(r.gold), n_max) for r in quality.records) / quality.n,
        )
    bridged = bridge_first_plans(task.examples, outputs, n_max)
    if bridged:
        row["bridge_first_rate"] = sum(first for _, _, first in bridged) / len(bridged)
    return row


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`decomposer_summary` rows (with a ``decomposer`` key) as markdown."""
    lines = [
        "| task (n) | decomposer | parse | declined | mean # (gold) | token F1 [95% CI] "
        "| vs trivial [95% CI] | self/fwd ref | empty | bridge first |",
        "|" + " --- |" * 10,
    ]
    for row in rows:
        mean = f"{row['mean_predicted']:.2f}"
        if "mean_gold_capped" in row:
            mean += f" ({row['mean_gold_capped']:.2f})"
        f1 = delta = "-"
        if "token_f1" in row:
            low, high = row["token_f1_ci"]
            f1 = f"{row['token_f1']:.3f} [{low:.3f}, {high:.3f}]"
            low, high = row["delta_vs_trivial_ci"]
            delta = f"{row['delta_vs_trivial']:+.3f} [{low:+.3f}, {high:+.3f}]"
        lines.append(
            f"| {row['task']} ({row['n']}) | {row.get('decomposer', '-')} | "
            f"{_pct(row['parse_rate'])} | {_pct(row['declined_rate'])} | {mean} | {f1} | "
            f"{delta} | {_pct(row['reference_rate'])} | {_pct(row['content_free_rate'])} | "
            f"{_pct(row.get('bridge_first_rate'))} |"
        )
    return "\n".join(lines)
