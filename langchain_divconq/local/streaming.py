"""How much of a growing ``no_repeat_lines`` generation can be streamed without taking it back.

With ``no_repeat_lines`` a complete line that repeats an earlier one is dropped, along
with the newlines before it (:func:`~langchain_divconq.local.decoding.cut_text`). A
stream must never send text that the final answer drops, but holding every line back
until it is complete turns token streaming into line streaming. The rule here holds
back only what could still be dropped: the unfinished line, and the newlines before
it, while some way of finishing that line would repeat an earlier line. As soon as
the line's start differs from every earlier line (under the same comparison as
:func:`~langchain_divconq.prompts.line_key`), it streams token by token.
"""

from __future__ import annotations

import re

from langchain_divconq.prompts import line_key

__all__ = ["repeat_safe_end"]

# A line start that may still grow into a numbering prefix ("1", "(2", "Q3"), which
# line_key strips: until it is settled, the line may still turn out to be any line.
_PARTIAL_PREFIX = re.compile(r"\(?\d*|q\d*", re.IGNORECASE)


def repeat_safe_end(text: str) -> int:
    r"""Return how many leading characters of unfinished ``text`` can no longer be dropped.

    ``text`` is a generation so far that no complete line of which repeats an earlier
    one (else it would have been cut already). The unfinished last line and the
    newlines before it are held back while the line could still become a repeat;
    otherwise everything is safe (stop strings are a separate matter).

    Example:
        >>> repeat_safe_end("How many eggs?\nHow m")  # may still repeat line 1
        14
        >>> repeat_safe_end("How many eggs?\nWhat")  # cannot any more
        19
        >>> repeat_safe_end("How ma")  # the first line has nothing to repeat
        6

    """
    line_start = text.rfind("\n") + 1
    seen = {line_key(line).casefold() for line in text[:line_start].split("\n")}
    seen.discard("")
    if not seen or not _could_repeat(text[line_start:], seen):
        return len(text)
    return len(text[:line_start].rstrip("\n"))


def _could_repeat(partial: str, seen: set[str]) -> bool:
    """Whether some completion of the unfinished line ``partial`` has a key in ``seen``.

    ``line_key`` of a longer line starts with ``line_key`` of its start, up to end
    punctuation (which ``line_key`` drops and more text may follow), a trailing ``*``
    (which may become ``**``, dropped) and a numbering prefix still being written.
    Casefolding keeps the prefix relation for every character, unlike ``lower``.
    """
    stem = line_key(partial.rstrip("*")).casefold()
    if _PARTIAL_PREFIX.fullmatch(stem):
        return True
    return any(key.startswith(stem) for key in seen)
