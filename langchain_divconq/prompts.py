"""Prompts for the decomposer and the solver, and the parsers for their outputs.

This module is the single source of truth for the text that crosses a model
boundary: the chain builds its messages here at inference time, and the
training subpackage builds its datasets with the very same functions, so a
distilled decomposer sees exactly the prompt it was trained on.

Static planning, as in Wu et al. (2024): one decomposer call returns at most
``N`` sub-questions (one per line) or :data:`NO_DECOMPOSITION`; one solver call
receives the question and every sub-question, answers them in order and ends
with :data:`ANSWER_MARKER`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

__all__ = [
    "ANSWER_MARKER",
    "DEFAULT_MAX_SUB_QUESTIONS",
    "LOOP_PHRASE_WORDS",
    "MAX_DECOMPOSITION_CHARS",
    "MAX_SUB_QUESTION_CHARS",
    "NODE_METADATA_KEY",
    "NO_DECOMPOSITION",
    "cap_decomposition",
    "decomposer_messages",
    "extract_answer",
    "format_sub_questions",
    "line_key",
    "loops",
    "message_text",
    "parse_sub_questions",
    "single_stage_messages",
    "solver_messages",
]

NODE_METADATA_KEY = "divconq_node"
"""Metadata key naming the node a run belongs to: ``chain``, ``decomposer`` or ``solver``.

The chain sets it, and callbacks (such as :class:`~langchain_divconq.tracing.TraceRecorder`)
read it to find the chain's root run even when the chain is nested in an agent.
"""


DEFAULT_MAX_SUB_QUESTIONS = 3
"""The paper's default plan size; 2 suits Bamboogle-style two-hop questions."""

NO_DECOMPOSITION = "NO_SUBQUESTIONS"
"""What the decomposer replies when the question needs no decomposition."""

ANSWER_MARKER = "The answer is:"
"""The fixed phrase that introduces the solver's final answer."""

_DECOMPOSER_SYSTEM = (
    "You break a question into simpler sub-questions that lead to its answer. "
    "Do not answer anything. Write at most {n} sub-questions, one per line, "
    "each ending with a question mark, and nothing else. If the question is "
    "already simple, reply with exactly {sentinel}."
)

_SOLVER_SYSTEM = (
    "You answer questions carefully. When sub-questions are given, answer each "
    "of them in order, briefly, and use those answers to answer the main "
    "question. Finish with a last line of the form '{marker} <final answer>'."
)

_DIRECT_SYSTEM = (
    "You answer questions. Reply with only the final answer, on one line of "
    "the form '{marker} <final answer>'."
)

_COT_SYSTEM = (
    "You answer questions. Think step by step, then finish with a last line "
    "of the form '{marker} <final answer>'."
)


def _question_block(question: str, context: str | None) -> str:
    if context:
        return f"Passage:\n{context.strip()}\n\nQuestion: {question.strip()}"
    return f"Question: {question.strip()}"


def decomposer_messages(
    question: str,
    context: str | None = None,
    *,
    max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS,
) -> list[BaseMessage]:
    """Build the messages sent to the decomposer.

    Args:
        question: The question to decompose.
        context: An optional passage (reading-comprehension tasks such as DROP).
        max_sub_questions: The most sub-questions the decomposer may write.

    Returns:
        A system message with the instructions and a human message with the question.

    Example:
        >>> msgs = decomposer_messages("What is 2 + 3 * 4?")
        >>> msgs[1].content
        'Question: What is 2 + 3 * 4?'

    """
    system = _DECOMPOSER_SYSTEM.format(n=max_sub_questions, sentinel=NO_DECOMPOSITION)
    return [SystemMessage(content=system), HumanMessage(content=_question_block(question, context))]


def solver_messages(
    question: str,
    sub_questions: Sequence[str],
    context: str | None = None,
) -> list[BaseMessage]:
    """Build the messages sent to the solver.

    With no sub-questions the solver is asked the question directly (still
    ending with the answer marker), as the paper prescribes.

    Example:
        >>> solver_messages("Q?", ["A?", "B?"])[1].content.splitlines()[-2:]
        ['1. A?', '2. B?']

    """
    system = _SOLVER_SYSTEM.format(marker=ANSWER_MARKER)
    body = _question_block(question, context)
    if sub_questions:
        listed = "\n".join(f"{i}. {q}" for i, q in enumerate(sub_questions, start=1))
        body = f"{body}\n\nSub-questions:\n{listed}"
    return [SystemMessage(content=system), HumanMessage(content=body)]


def single_stage_messages(
    question: str, context: str | None = None, *, cot: bool = False
) -> list[BaseMessage]:
    """Build the messages of a single-stage baseline: direct answer, or chain of thought."""
    template = _COT_SYSTEM if cot else _DIRECT_SYSTEM
    return [
        SystemMessage(content=template.format(marker=ANSWER_MARKER)),
        HumanMessage(content=_question_block(question, context)),
    ]


_PREFIX = re.compile(
    r"""^\s*(?:
        (?:[-*+\u2022\u2013>]+\s*)                       # bullets
      | (?:\(?\d+[.):\]]\s*)                             # 1.  1)  (1)  1:
      | (?:(?:sub[-\s]?question|question|step|q)\s*\#?\d*\s*[.):\-]\s*)  # Q1: Step 2.
    )+""",
    re.IGNORECASE | re.VERBOSE,
)
_QUESTION_START = re.compile(
    r"^(?:how|what|which|who|whom|whose|when|where|why|is|are|was|were|do|does|did|"
    r"can|could|will|would|should|has|have|had)\b",
    re.IGNORECASE,
)
MAX_SUB_QUESTION_CHARS = 1_000
"""The longest sub-question :func:`parse_sub_questions` returns; longer ones are cut to this."""

MAX_DECOMPOSITION_CHARS = 16_000
"""The most decomposer text the chain parses and keeps (see :func:`cap_decomposition`)."""

# Terminal escape sequences (CSI such as ESC[31m, OSC such as ESC]0;title BEL, and
# two-byte ESC sequences), removed whole so that no "[31m" is left behind.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?|"
    r"\x1b[@-Z\\-_]"
)


def _printable(line: str) -> str:
    """Drop escape sequences and control/format characters (NUL, ESC, DEL, U+200B...)."""
    if line.isprintable():
        return line
    line = _ESCAPE.sub("", line)
    return "".join(c if c.isprintable() else " " if c.isspace() else "" for c in line)


def _clean_line(line: str) -> str:
    line = _printable(line)
    line = line.replace("**", "").replace("__", "").strip().strip("`").strip()
    previous = None
    while previous != line:  # prefixes can stack, e.g. "- Q1: ..."
        previous = line
        line = _PREFIX.sub("", line, count=1).strip()
    return line


def _questions_in_line(line: str) -> Iterator[str]:
    # One pass over the "?" positions: linear in the line (a regex such as
    # "[^?]*\?" rescans the tail from every position of a line without "?").
    start, found = 0, False
    while (end := line.find("?", start)) >= 0:
        question = line[start : end + 1].strip()
        start = end + 1
        if len(question) > 1:
            found = True
            yield question
    # A model sometimes omits the "?"; an interrogative opening still marks a question.
    if not found and _QUESTION_START.match(line) and len(line.split(maxsplit=2)) >= 3:
        yield line.rstrip(" .:;") + "?"


LOOP_PHRASE_WORDS = 6
"""A sub-question in which one phrase of this many words comes three times is a loop. Six
words flag none of 59,106 gold sub-questions and last question sentences of the bundled
tasks; four words flagged 16 ("bird families flew away" in SVAMP)."""


def loops(question: str) -> bool:
    """Whether a sub-question repeats a phrase of its own three times (a decoding loop).

    Small decomposers can run on in one line ("Who is the father of X that was the
    father of X that was the father of X ...") until the token budget; such a line asks
    nothing a solver can use.

    Example:
        >>> loops("What is the son of Ann who was the son of Ann who was the son of Ann who was")
        True
        >>> loops("Is the main use of A the same as the main use of B?")
        False

    """
    words = [w.strip("?.,;:!\"'") for w in question.lower().split()]
    n = LOOP_PHRASE_WORDS
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        phrase = tuple(words[i : i + n])
        counts[phrase] = counts.get(phrase, 0) + 1
        if counts[phrase] >= 3:
            return True
    return False


def _capped(question: str) -> str:
    if len(question) <= MAX_SUB_QUESTION_CHARS:
        return question
    return question[: MAX_SUB_QUESTION_CHARS - 1].rstrip() + "?"


def parse_sub_questions(text: str, max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS) -> list[str]:
    """Turn decomposer output into a list of sub-questions.

    Numbering, bullets and ``Q1:``-style prefixes are stripped, lines that carry
    no question are dropped, duplicates are removed (ignoring case and spacing),
    so are sub-questions that loop on a phrase of their own (:func:`loops`), and
    the list is capped at ``max_sub_questions``. The sentinel
    :data:`NO_DECOMPOSITION` on its own line yields ``[]``. Control characters
    and terminal escape sequences are removed, a sub-question longer than
    :data:`MAX_SUB_QUESTION_CHARS` is cut to that length (still ending in "?"),
    and the time taken is linear in the length of ``text``.

    Example:
        >>> parse_sub_questions("Here you go:\\n1. How many in May?\\n2) How many in all?")
        ['How many in May?', 'How many in all?']

    """
    if max_sub_questions < 0:
        msg = f"max_sub_questions must be >= 0, got {max_sub_questions}."
        raise ValueError(msg)
    found: list[str] = []
    seen: set[str] = set()
    if max_sub_questions == 0:
        return found
    for raw in text.splitlines():
        line = _clean_line(raw)
        if not line:
            continue
        if line.strip(" .").upper() == NO_DECOMPOSITION and not found:
            return []
        for question in _questions_in_line(line):
            question = _capped(question)
            key = " ".join(question.lower().split())
            if key in seen or loops(question):
                continue
            seen.add(key)
            found.append(question)
            if len(found) == max_sub_questions:
                return found
    return found


def cap_decomposition(text: str, limit: int = MAX_DECOMPOSITION_CHARS) -> tuple[str, bool]:
    """Return ``(kept text, whether it was cut)``: at most ``limit`` characters, whole lines.

    A runaway decomposer (a remote model that never stops) can return megabytes;
    the parser needs only the first lines, so the chain parses and keeps the text
    up to the last line break within ``limit`` (or ``limit`` characters of one
    long line). Replies within the limit are returned unchanged.

    Example:
        >>> cap_decomposition("How many?\\n" + "x" * 50, limit=20)
        ('How many?', True)
        >>> cap_decomposition("How many?")
        ('How many?', False)

    """
    if len(text) <= limit:
        return text, False
    kept = text[:limit]
    cut = kept.rfind("\n")
    return (kept[:cut] if cut > 0 else kept), True


def format_sub_questions(sub_questions: Sequence[str]) -> str:
    """Render sub-questions as the decomposer should write them (the inverse of parsing).

    Example:
        >>> format_sub_questions(["How many in May?", "How many in all?"])
        'How many in May?\\nHow many in all?'
        >>> format_sub_questions([])
        'NO_SUBQUESTIONS'

    """
    lines = [" ".join(q.split()) for q in sub_questions if q.strip()]
    return "\n".join(lines) if lines else NO_DECOMPOSITION


_ANSWER = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?\s*(.*)", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """Return the text after the last answer marker, or ``None`` when there is none.

    Example:
        >>> extract_answer("48 / 2 = 24. 48 + 24 = 72.\\nThe answer is: 72.")
        '72'

    """
    answer: str | None = None
    for line in text.splitlines():
        for match in _ANSWER.finditer(line.replace("**", "")):
            candidate = match.group(1).strip().strip("*").strip()
            candidate = re.sub(r"[.\s]+$", "", candidate)
            if candidate:
                answer = candidate
    return answer


def message_text(output: object) -> str:
    """Return the text of a model output: a message, a string, or a list of content blocks."""
    if isinstance(output, str):
        return output
    content = output.content if isinstance(output, BaseMessage) else output
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            block if isinstance(block, str) else str(block.get("text", ""))
            for block in content
            if isinstance(block, str | dict)
        ]
        return "".join(parts)
    msg = (
        f"Expected a chat message or a string from the model, got {type(output).__name__}. "
        "Use a chat model or an LLM, or end a custom runnable with StrOutputParser()."
    )
    raise TypeError(msg)


_LINE_PREFIX = re.compile(r"^(?:[-*+\u2022>]+|\(?\d+[.):\]]|q\d+\s*[.):\-])\s*", re.IGNORECASE)


def line_key(line: str) -> str:
    """Return a line without numbering or bullets, lowercased, without spacing or end marks.

    Two lines with the same key ask the same thing: the one rule for "repeated
    sub-question" in decoding (the no-repeat stop) and in evaluation (repeat rate).
    """
    line = line.replace("**", "").strip()
    previous = None
    while previous != line:
        previous = line
        line = _LINE_PREFIX.sub("", line, count=1).strip()
    return " ".join(line.lower().split()).rstrip(" ?.!:;")
