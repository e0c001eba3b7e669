"""Gold plans as sub-questions: Break's phrases and ``#k`` back-references in words.

A decomposer's sub-questions reach the solver as they are, so a gold plan used as a
target (training) or as a reference (evaluation) must read as questions that stand on
their own. Two data sets write plans otherwise:

* Break (QDMR, Wolfson et al., 2020) writes phrases: "the country where Jamaican
  English is spoken", then "the most common language in #1".
* StrategyQA writes questions that point back: "How many kids did Genghis Khan
  have?", then "Is #2 greater than #1?".

:func:`rewrite_plan` turns either into questions: a phrase becomes a question by
simple templates (:func:`as_question`), and ``#k`` becomes the words of what step k
asks for (:func:`as_phrase`: "the number of kids Genghis Khan had"), never the
content-free "the answer to question k". A step whose reference no template can put
in words makes the plan unusable (None), so callers drop it instead of teaching a
template.

Example:
    >>> rewrite_plan(["the country where Jamaican English is spoken",
    ...               "the most common language in #1"])
    ['What is the country where Jamaican English is spoken?', 'What is the most common \
language in the country where Jamaican English is spoken?']

"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["as_phrase", "as_question", "past_tense", "rewrite_plan"]

_REFERENCE = re.compile(r"#(\d+)")
_QUESTION_START = re.compile(
    r"(?i)^(what|who|whom|whose|which|when|where|why|how|is|are|was|were|do|does|did|can|"
    r"could|has|have|had|will|would|should)\b|^(?i:(in|on|at|for|from|of|to|by|with|under|"
    r"during|through|into|after|before|since|until|over|about|among|between|against) "
    r"(which|what|whom|whose)\b)"
)
_AUXILIARIES = ("is", "are", "was", "were", "does", "do", "did", "has", "have", "can")
_DETERMINERS = {"the", "a", "an", "all", "each", "any", "some", "every", "both"}
_BOUNDARY = {
    "of", "that", "with", "in", "where", "who", "whom", "which", "for", "from", "on", "at",
    "by", "to", "when", "whose", "as", "than", "between", "among", "about", "during",
}  # fmt: skip
_PEOPLE = {
    "actor", "actress", "artist", "athlete", "author", "bassist", "brother", "ceo", "child",
    "children", "coach", "composer", "daughter", "designer", "director", "drummer", "emperor",
    "father", "founder", "guitarist", "husband", "inventor", "keeper", "king", "leader", "man",
    "manager", "member", "men", "mother", "musician", "novelist", "owner", "people", "person",
    "physicist", "player", "poet", "politician", "president", "prince", "princess", "producer",
    "queen", "rapper", "scientist", "senator", "singer", "sister", "son", "songwriter", "spouse",
    "star", "wife", "woman", "women", "writer", "murderer", "governor", "mayor", "minister",
    "chancellor", "monarch", "pope", "general", "officer", "architect", "painter", "sculptor",
    "philosopher", "mathematician", "chemist", "biologist", "economist", "journalist", "host",
    "comedian", "dancer", "model", "boxer", "wrestler", "pitcher", "quarterback", "goalkeeper",
    "representative", "secretary", "successor", "predecessor", "character", "creator",
}  # fmt: skip
_IRREGULAR = {
    "be": "was", "become": "became", "begin": "began", "break": "broke", "bring": "brought",
    "build": "built", "buy": "bought", "catch": "caught", "choose": "chose", "come": "came",
    "do": "did", "draw": "drew", "drink": "drank", "drive": "drove", "eat": "ate", "fall": "fell",
    "feel": "felt", "fight": "fought", "find": "found", "fly": "flew", "forget": "forgot",
    "get": "got", "give": "gave", "go": "went", "grow": "grew", "have": "had", "hear": "heard",
    "hold": "held", "keep": "kept", "know": "knew", "lead": "led", "leave": "left", "lose": "lost",
    "make": "made", "mean": "meant", "meet": "met", "pay": "paid", "ride": "rode", "rise": "rose",
    "run": "ran", "say": "said", "see": "saw", "sell": "sold", "send": "sent", "sing": "sang",
    "sit": "sat", "speak": "spoke", "spend": "spent", "stand": "stood", "steal": "stole",
    "swim": "swam", "take": "took", "teach": "taught", "tell": "told", "think": "thought",
    "throw": "threw", "understand": "understood", "wear": "wore", "win": "won", "write": "wrote",
    "shoot": "shot", "fit": "fit", "put": "put", "set": "set", "cost": "cost", "hit": "hit",
    "let": "let", "cut": "cut", "read": "read", "spread": "spread", "found": "founded",
}  # fmt: skip
_WH = ("what", "who", "whom", "whose", "which", "when", "where", "why", "how")
_INDIRECT_AUXILIARIES = (
    *(a for a in _AUXILIARIES if a not in ("has", "have")),  # 'have' is mostly a main verb
    "could", "would", "will", "should", "might",
)  # fmt: skip
_PRESENT_3RD = {"have": "has", "do": "does", "be": "is", "go": "goes"}
_MAX_PHRASE_WORDS = 18


def past_tense(verb: str) -> str:
    """Return the simple past of an English verb (a small irregular table, else rules).

    Example:
        >>> past_tense("have"), past_tense("marry"), past_tense("stop"), past_tense("live")
        ('had', 'married', 'stopped', 'lived')

    """
    lower = verb.lower()
    if lower in _IRREGULAR:
        return _IRREGULAR[lower]
    if lower.endswith("e"):
        return lower + "d"
    if lower.endswith("y") and len(lower) > 2 and lower[-2] not in "aeiou":
        return lower[:-1] + "ied"
    if (
        len(lower) <= 4
        and len(lower) >= 3
        and lower[-1] not in "aeiouwxy"
        and lower[-2] in "aeiou"
        and lower[-3] not in "aeiou"
    ):
        return lower + lower[-1] + "ed"
    return lower + "ed"


def _present(verb: str) -> str:
    lower = verb.lower()
    if lower in _PRESENT_3RD:
        return _PRESENT_3RD[lower]
    if lower.endswith(("s", "sh", "ch", "x", "z", "o")):
        return lower + "es"
    if lower.endswith("y") and len(lower) > 2 and lower[-2] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def _clean(text: str) -> str:
    return " ".join(text.replace("?", " ").split()).strip(" .,;:")


def _head(words: Sequence[str]) -> str:
    """Return a phrase's head noun: the last word before its first preposition or clause."""
    kept: list[str] = []
    for word in words:
        if word.lower() in _BOUNDARY or word.startswith("#"):
            break
        if word.lower() in _DETERMINERS and not kept:
            continue
        if kept and word[0].isupper():
            break  # 'the city Joey King lives in': the head comes before the name
        kept.append(word.lower())
    return kept[-1] if kept else ""


def _plural(word: str) -> bool:
    return word in {"people", "men", "women", "children"} or (
        len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is"))
    )


def as_question(step: str) -> str:
    """Turn one plan step into a question (a question stays one, with its first letter up).

    Example:
        >>> as_question("the wife of the writer of Standup Shakespeare")
        'Who is the wife of the writer of Standup Shakespeare?'
        >>> as_question("if the film Splash is less than the film Tangled")
        'Is the film Splash less than the film Tangled?'
        >>> as_question("number of episodes of Friends")
        'What is the number of episodes of Friends?'

    """
    text = _clean(step)
    if not text:
        return text
    lower = text.lower()
    if lower.startswith("if "):
        rest = text[3:]
        for aux in _AUXILIARIES:
            match = re.search(rf"\s{aux}\s", f" {rest} ")
            if match is not None:
                start = match.start()
                before, after = rest[:start].strip(), rest[start + len(aux) + 1 :].strip()
                if before:
                    return f"{aux.capitalize()} {before} {after}?".replace("  ", " ")
        return f"Is it true that {rest}?"
    if _QUESTION_START.match(text):
        return text[0].upper() + text[1:] + "?"
    words = text.split()
    head = _head(words)
    verb = "are" if _plural(head) else "is"
    wh = "Who" if head in _PEOPLE else "What"
    if words[0].lower() not in _DETERMINERS and not text[0].isupper():
        text = f"the {text}"
    return f"{wh} {verb} {text}?"


def as_phrase(question: str) -> str | None:
    """Put what a question asks for in words that can stand for its answer, or None.

    Example:
        >>> as_phrase("How many kids did Genghis Khan have?")
        'the number of kids Genghis Khan had'
        >>> as_phrase("When was the film Splash released?")
        'the date the film Splash was released'
        >>> as_phrase("What is the capital of France?")
        'the capital of France'
        >>> as_phrase("Why is the sky blue?")
        'why the sky is blue'
        >>> print(as_phrase("Is the sky blue?"))
        None

    """
    text = _clean(question)
    words = text.split()
    if len(words) < 2:
        return None
    first, second = words[0].lower(), words[1].lower()
    rest = words[2:]
    if first in ("what", "who") and second in ("is", "are", "was", "were") and rest:
        return _with_article(" ".join(rest))
    if first == "when" and second in ("was", "were", "is", "are") and len(rest) >= 2:
        return f"the date {' '.join(rest[:-1])} {second} {rest[-1]}"
    if first == "when" and second in ("did", "does", "do") and len(rest) >= 2:
        return _clause_phrase("the date", second, rest)
    if first == "in" and second in ("what", "which") and len(words) >= 5:
        return _what_noun(words[2:])
    if first == "where" and second in ("is", "was", "are", "were") and rest:
        return f"the place where {' '.join(rest)} {second}"
    if first == "how" and second in ("many", "much"):
        return _how_many(second, rest)
    if first in ("what", "which") and len(words) >= 4:
        found = _what_noun(words[1:])
        if found is not None:
            return found
    if first in _WH:
        return _indirect(words)
    if first in _AUXILIARIES or first == "if":
        return None  # a yes/no answer has no words of its own
    if text[0].islower() and not _QUESTION_START.match(text):
        return _with_article(text)  # already a phrase (Break)
    return None


def _indirect(words: Sequence[str]) -> str | None:
    """Return the indirect question: 'How tall is Christopher Nolan' -> 'how tall ... is'."""
    for index, word in enumerate(words[:5]):
        lower = word.lower()
        if index == 0 or lower not in _INDIRECT_AUXILIARIES:
            continue
        wh = " ".join([words[0].lower(), *words[1:index]])
        clause = list(words[index + 1 :])
        if not clause:
            return None
        if lower in ("did", "does", "do"):
            return _clause_phrase(wh, lower, clause)
        at = _verb_index(clause, whole=True) or len(clause)
        return " ".join([wh, *clause[:at], lower, *clause[at:]])
    # A subject question ('What separates X and Y') reads as it is.
    return " ".join([words[0].lower(), *words[1:]])


def _with_article(phrase: str) -> str:
    words = phrase.split()
    if words[0].lower() in _DETERMINERS or words[0][0].isupper() or words[0].startswith("#"):
        return phrase
    return f"the {phrase}"


def _how_many(kind: str, rest: list[str]) -> str | None:
    """'How many X did S V O' -> 'the number of X S V-ed O' (and is/are/does forms)."""
    for index, word in enumerate(rest):
        lower = word.lower()
        if lower in ("did", "does", "do") and index >= (1 if kind == "many" else 0):
            thing, clause = rest[:index], rest[index + 1 :]
            if len(clause) < 2:
                return None
            subject_end = _verb_index(clause)
            if subject_end is None:
                return None
            verb = clause[subject_end]
            tensed = past_tense(verb) if lower == "did" else _present(verb)
            words = [*clause[:subject_end], tensed, *clause[subject_end + 1 :]]
            noun = f"the number of {' '.join(thing)}" if thing else "the amount"
            return f"{noun} {' '.join(words)}".strip()
        if lower in ("is", "are", "was", "were") and index >= 1:
            return " ".join(["the number of", *rest[:index], *rest[index + 1 :]])
        if lower in ("has", "have", "had") and index >= 1:
            clause = rest[index + 1 :]
            at = _verb_index(clause) or len(clause)
            return " ".join(["the number of", *rest[:index], *clause[:at], lower, *clause[at:]])
    if rest:
        return f"the number of {' '.join(rest)}"
    return None


def _verb_index(clause: Sequence[str], *, whole: bool = False) -> int | None:
    """Where the verb starts in 'S V O' after an auxiliary: after a name or a noun phrase."""
    if len(clause) < 2:
        return None
    # A subject is a capitalised name run, or a determiner + noun(s); the verb is the first
    # lower-case word after it that is not part of the noun phrase.
    index = 0
    if clause[0].lower() in _DETERMINERS:
        index = 2 if len(clause) > 2 else 1
        while index < len(clause) - 1 and clause[index][0].isupper():
            index += 1
        return index
    # whole=True: the clause may be all subject ('is Christopher Nolan'), so the run may end it.
    last = len(clause) if whole else len(clause) - 1
    while index < last and (clause[index][0].isupper() or clause[index][0].isdigit()):
        index += 1
    return index if index > 0 else 1


def _clause_phrase(noun: str, auxiliary: str, clause: Sequence[str]) -> str | None:
    """'<noun> S V-ed O' from 'did S V O' ('does' gives the present tense)."""
    verb_at = _verb_index(clause)
    if verb_at is None or verb_at >= len(clause):
        return None
    verb = clause[verb_at]
    tensed = past_tense(verb) if auxiliary == "did" else _present(verb)
    return " ".join([noun, *clause[:verb_at], tensed, *clause[verb_at + 1 :]])


def _what_noun(words: list[str]) -> str | None:
    """Read 'What X did S V' as 'the X S V-ed', 'Which X was S V-ed with' as 'the X S was ...'.

    A subject question ('Which X is the largest') gives 'the X that is the largest'; 'What X
    is S' gives 'the X of S'.
    """
    for index, word in enumerate(words[:4]):  # 'What X did ...': X is a short noun phrase
        lower = word.lower()
        if index == 0:
            continue
        thing = "the " + " ".join(words[:index])
        clause = words[index + 1 :]
        if lower in ("did", "does", "do"):
            return _clause_phrase(thing, lower, clause)
        if lower in ("is", "are", "was", "were") and clause:
            last = clause[-1].lower()
            participle = len(last) > 4 and last.endswith(("ed", "en"))
            if len(clause) >= 2 and (last in _BOUNDARY or participle):
                at = _verb_index(clause) or 1
                return " ".join([thing, *clause[:at], lower, *clause[at:]])
            if clause[0][0].isupper() or clause[0].startswith("#"):
                return f"{thing} of {' '.join(clause)}"
            return f"{thing} that {lower} {' '.join(clause)}"
    if len(words) >= 3 and words[1][0].islower() and words[1].lower() not in _INDIRECT_AUXILIARIES:
        return f"the {words[0]} that {' '.join(words[1:])}"  # 'Which team won the cup'
    return None


def _is_yes_no(step: str) -> bool:
    return step.split()[0].lower() in (*_AUXILIARIES, "if")


def _combines_answers(step: str, yes_no: Sequence[bool]) -> bool:
    """Whether a step only relates earlier yes/no answers ('if both #1 and #2 are true')."""
    references = [int(k) for k in _REFERENCE.findall(step)]
    return bool(references) and all(1 <= k <= len(yes_no) and yes_no[k - 1] for k in references)


def rewrite_plan(steps: Sequence[str]) -> list[str] | None:
    """Rewrite a gold plan (Break phrases or ``#k`` questions) into standalone questions.

    Each ``#k`` becomes the words of step k (:func:`as_phrase`); each step then becomes
    a question (:func:`as_question`). Returns None when a reference has no words (it
    points at a yes/no step, a later step or itself, or a template cannot read step k)
    or when a resolved step grows past a readable length.

    Example:
        >>> rewrite_plan(["How many kids did Julius Caesar have?",
        ...               "How many kids did Genghis Khan have?", "Is #2 greater than #1?"])[2]
        'Is the number of kids Genghis Khan had greater than the number of kids Julius \
Caesar had?'

    """
    phrases: list[str | None] = []
    yes_no: list[bool] = []
    questions: list[str] = []
    for position, raw in enumerate(steps, start=1):
        step = _clean(raw)
        if not step:
            return None
        failed = False

        def words_for(match: re.Match[str], position: int = position) -> str:
            nonlocal failed
            k = int(match.group(1))
            phrase = phrases[k - 1] if 1 <= k < position else None
            if phrase is None:
                failed = True
                return match.group(0)
            return phrase

        resolved = _REFERENCE.sub(words_for, step)
        if failed and position == len(steps) and _combines_answers(step, yes_no):
            break  # 'if both #1 and #2 are true': the solver combines the yes/no answers
        if failed or len(resolved.split()) > 2 * _MAX_PHRASE_WORDS:
            return None
        asks = raw.strip().endswith("?") and not _is_yes_no(resolved)
        question = resolved[0].upper() + resolved[1:] + "?" if asks else as_question(resolved)
        phrase = as_phrase(resolved) if _QUESTION_START.match(resolved) else None
        if phrase is None and not (asks or _QUESTION_START.match(resolved)):
            phrase = None if _is_yes_no(resolved) else _with_article(resolved)
        if phrase is not None and len(phrase.split()) > _MAX_PHRASE_WORDS:
            phrase = None
        phrases.append(phrase)
        yes_no.append(_is_yes_no(resolved))
        questions.append(question)
    return questions
