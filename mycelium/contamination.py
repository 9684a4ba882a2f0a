"""Contamination: training questions that share a run of 13 words with an evaluation question.

    >>> from mycelium.contamination import Overlap
    >>> held_out = Overlap(["Joan found 70 seashells on the beach. She gave Sam some of her seashells. "
    ...                     "She has 27 seashell left. How many seashells did she give to Sam ?"])
    >>> held_out.hits("Joan found 70 seashells on the beach . she gave Sam some of her seashells.")
    True
    >>> held_out.hits("Joan found 70 seashells on the beach and kept them all.")
    False

ASDiv and MAWPS are both built from the same older collections (AddSub,
SingleOp, ...): 266 of ASDiv's 1,715 training problems share 13 words with a
MAWPS test problem, most of them word for word. Training on them would turn
the MAWPS figure into a memory test, so `mycelium train` leaves out every
training question that overlaps an evaluation set (`data.evaluation_sets`).
13 words is the rule GPT-3's contamination study used; questions are compared
as lower-cased words with punctuation removed, so spacing and capitals do not
hide a copy. A question shorter than 13 words is compared whole.
"""

from __future__ import annotations

import string
from typing import Iterable

N = 13
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def words(text: str) -> list[str]:
    return text.lower().translate(_PUNCTUATION).split()


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    """Every run of n words; a shorter text is one run, itself."""
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))} if w else set()


class Overlap:
    """The 13-word runs of a set of questions, to ask whether another question shares one."""

    def __init__(self, questions: Iterable[str], n: int = N):
        self.n = n
        self.grams = set().union(*(ngrams(q, n) for q in questions))

    def hits(self, question: str) -> bool:
        return not self.grams.isdisjoint(ngrams(question, self.n))


def leave_out(rows: list[dict], held_out: Overlap) -> tuple[list[dict], list[str]]:
    """Training rows (dicts with id and question) that share no run with `held_out`, and the ids of those that do."""
    kept, out = [], []
    for r in rows:
        if held_out.hits(r["question"]):
            out.append(r["id"])
        else:
            kept.append(r)
    return kept, out
