"""Stop checkers: end a generated row as soon as its text is complete.

Token-level checkers (:data:`TokenStopChecker`) see a row's new token ids after
every token; :func:`text_stop_checker` adapts a text checker such as
:func:`decomposer_stop` or :func:`stop_strings` to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_divconq.prompts import NO_DECOMPOSITION, line_key, parse_sub_questions

__all__ = [
    "TokenStopChecker",
    "decomposer_stop",
    "repeated_line_start",
    "stop_strings",
    "text_stop_checker",
]

TokenStopChecker = Callable[[Sequence[int]], bool]
"""Called with a row's new token ids so far; ``True`` ends that row there."""


def stop_strings(stops: Sequence[str]) -> Callable[[str], bool]:
    r"""Return a text checker that fires once any of ``stops`` occurs in the text.

    Example:
        >>> stop_strings(["\n\n"])("a\n\nb")
        True

    """
    wanted = [s for s in stops if s]

    def check(text: str) -> bool:
        return any(s in text for s in wanted)

    return check


def repeated_line_start(text: str) -> int | None:
    r"""Return where the first complete line that repeats an earlier line starts, or None.

    Lines count as complete once a newline ends them; they are compared without
    numbering, bullets, case, spacing or end punctuation, so ``2. How many eggs?``
    repeats ``1. how many eggs``. Blank lines never repeat. Cutting the text at
    the returned offset keeps every line before the repeat.

    Example:
        >>> repeated_line_start("1. How many eggs?\n2. How much money?\n3. How many eggs?\n")
        37
        >>> repeated_line_start("How many eggs?\nHow many eggs?")  # the last one is unfinished
        >>> repeated_line_start("A?\nB?\n") is None
        True

    """
    seen: set[str] = set()
    pos = 0
    while (end := text.find("\n", pos)) >= 0:
        key = line_key(text[pos:end])
        if key:
            if key in seen:
                return pos
            seen.add(key)
        pos = end + 1
    return None


def decomposer_stop(max_sub_questions: int, *, no_repeat: bool = True) -> Callable[[str], bool]:
    r"""Return a text checker that ends a decomposition as soon as its plan is complete.

    It fires when the first line is the sentinel :data:`~langchain_divconq.prompts.NO_DECOMPOSITION`
    followed by a newline, or when the complete lines (those ended by a newline)
    hold ``max_sub_questions`` distinct sub-questions. Only complete lines count, so
    :func:`~langchain_divconq.prompts.parse_sub_questions` returns the same list
    for the cut text as for the full generation.

    Example:
        >>> stop = decomposer_stop(2)
        >>> stop("How many eggs?\n"), stop("How many eggs?\nHow much money?\n")
        (False, True)
        >>> stop("How many eggs?\nHow many eggs?\n")
        True

    """
    if max_sub_questions < 1:
        msg = f"max_sub_questions must be at least 1, got {max_sub_questions}."
        raise ValueError(msg)

    def check(text: str) -> bool:
        if not text.endswith("\n"):
            return False  # the last line is still being written
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines and lines[0].strip(" .").upper() == NO_DECOMPOSITION:
            return True
        if no_repeat and repeated_line_start(text) is not None:
            return True
        return len(parse_sub_questions(text, max_sub_questions=10_000)) >= max_sub_questions

    return check


def text_stop_checker(tokenizer: Any, check: Callable[[str], bool]) -> TokenStopChecker:
    """Adapt a text checker to token ids by decoding the new tokens (special tokens skipped).

    Example:
        >>> checker = text_stop_checker(tokenizer, decomposer_stop(3))  # doctest: +SKIP

    """

    def on_ids(token_ids: Sequence[int]) -> bool:
        return check(tokenizer.decode(list(token_ids), skip_special_tokens=True))

    return on_ids
