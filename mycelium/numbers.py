"""Quantities in problem text: a small number lexer plus text2num for word numerals.

    >>> [(q.text, q.value) for q in find_quantities("She eats three eggs and sells 1,200 at $2.50, 20% off.")]
    [('three', 3), ('1,200', 1200), ('$2.50', 5/2), ('20%', 20)]

Digits are a formal notation, so they are lexed character by character:
thousands separators, decimals, fractions and mixed numbers ("2 1/2"),
currency prefixes and percent suffixes. Numerals written as words go to
text2num, which knows English number grammar; nothing here knows what words
such as "half", "twice" or "dozen" mean, on purpose: the learned stages do.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from text_to_num import text2num

CURRENCY = "$€£¥"
MAX_NUMERAL_WORDS = 8  # "one hundred and twenty-five thousand three hundred" fits


@dataclass(frozen=True)
class Quantity:
    start: int  # character offsets into the text: text[start:end] == self.text
    end: int
    text: str
    value: sympy.Rational
    percent: bool = False
    currency: str = ""
    word: bool = False  # spelled out ("three") rather than digits

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "value": str(self.value),
                "percent": self.percent, "currency": self.currency, "word": self.word}

    @classmethod
    def from_json(cls, d: dict) -> "Quantity":
        return cls(d["start"], d["end"], d["text"], sympy.Rational(d["value"]),
                   d.get("percent", False), d.get("currency", ""), d.get("word", False))

    def values(self) -> tuple[sympy.Rational, ...]:
        """The values a solution may write for this mention: 20% is 20 or 0.2."""
        return (self.value, self.value / 100) if self.percent else (self.value,)


def _digits(text: str, i: int) -> int:
    while i < len(text) and text[i].isdigit():
        i += 1
    return i


def _lex_number(text: str, i: int) -> tuple[int, str] | None:
    """Lex a numeral starting at text[i]; return (end, canonical digits) or None."""
    n = len(text)
    start_digits = i
    if text[i] == ".":
        if i + 1 >= n or not text[i + 1].isdigit():
            return None
        end = _digits(text, i + 1)
        return end, "0" + text[i:end]
    j = _digits(text, i)
    if j == i:
        return None
    canonical = text[i:j]
    # Thousands groups: a comma followed by exactly three digits.
    while j < n and text[j] == "," and _digits(text, j + 1) == j + 4:
        canonical += text[j + 1:j + 4]
        j += 4
    if j + 1 < n and text[j] == "." and text[j + 1].isdigit():
        k = _digits(text, j + 1)
        canonical += text[j:k]
        j = k
    elif j + 1 < n and text[j] == "/" and text[j + 1].isdigit() and "," not in text[start_digits:j]:
        k = _digits(text, j + 1)
        if int(text[j + 1:k]) != 0:
            canonical += text[j:k]
            j = k
    elif j + 3 < n and text[j] == " " and text[j + 1].isdigit():
        # Mixed number "2 1/2": whole part, one space, a proper fraction.
        k = _digits(text, j + 1)
        if k + 1 < n and text[k] == "/" and text[k + 1].isdigit():
            m = _digits(text, k + 1)
            num, den = int(text[j + 1:k]), int(text[k + 1:m])
            if 0 < num < den:
                return m, str(sympy.Rational(int(canonical)) + sympy.Rational(num, den))
    return j, canonical


def _words(text: str, i: int) -> list[tuple[int, int]]:
    """Up to MAX_NUMERAL_WORDS (start, end) word spans from i, separated by single spaces."""
    spans = []
    while i < len(text) and len(spans) < MAX_NUMERAL_WORDS and text[i].isalpha():
        j = i
        while j < len(text) and (text[j].isalpha() or (text[j] == "-" and j + 1 < len(text) and text[j + 1].isalpha())):
            j += 1
        spans.append((i, j))
        if j + 1 < len(text) and text[j] == " " and text[j + 1].isalpha():
            i = j + 1
        else:
            break
    return spans


def _parse_words(phrase: str) -> int | None:
    try:
        return text2num(phrase.lower(), "en")
    except (ValueError, IndexError, KeyError):
        return None


def _lex_word_numeral(text: str, i: int) -> tuple[int, int] | None:
    """Longest run of words from i that text2num reads as one numeral: (end, value)."""
    spans = _words(text, i)
    if not spans or _parse_words(text[spans[0][0]:spans[0][1]]) is None:
        return None
    best = None
    for k in range(len(spans), 0, -1):
        value = _parse_words(text[i:spans[k - 1][1]])
        if value is not None:
            best = (spans[k - 1][1], value)
            break
    return best


def find_quantities(text: str) -> list[Quantity]:
    """Every number mention in `text`, in order, with exact values and character spans."""
    out: list[Quantity] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        prev = text[i - 1] if i else " "
        if c in CURRENCY and i + 1 < n and (text[i + 1].isdigit() or text[i + 1] == "."):
            lexed = _lex_number(text, i + 1)
            if lexed:
                end, canonical = lexed
                out.append(Quantity(i, end, text[i:end], sympy.Rational(canonical), currency=c))
                i = end
                continue
        if (c.isdigit() or c == ".") and not prev.isalnum() and not (c == "." and prev.isdigit()):
            lexed = _lex_number(text, i)
            if lexed:
                end, canonical = lexed
                percent = end < n and text[end] == "%"
                stop = end + 1 if percent else end
                out.append(Quantity(i, stop, text[i:stop], sympy.Rational(canonical), percent=percent))
                i = stop
                continue
        if c.isalpha() and not prev.isalnum():
            lexed = _lex_word_numeral(text, i)
            if lexed:
                end, value = lexed
                out.append(Quantity(i, end, text[i:end], sympy.Rational(value), word=True))
                i = end
                continue
            while i < n and text[i].isalnum():
                i += 1
            continue
        i += 1
    return out


def split_division(q: Quantity) -> tuple[Quantity, Quantity] | None:
    """A digit fraction mention ("20/4") as its two numbers with their spans; None for anything else.

    In problem text 20/4 is the fraction 5; in a solution's arithmetic it is
    usually 20 divided by 4, so solution readers split it.
    """
    num, slash, den = q.text.lstrip(CURRENCY).rstrip("%").partition("/")
    if not slash or q.word or " " in num:
        return None
    a = q.start + q.text.index(num)
    b = a + len(num) + 1
    return (Quantity(a, a + len(num), num, sympy.Rational(num.replace(",", ""))),
            Quantity(b, b + len(den), den, sympy.Rational(den)))


def parse_number(text: str) -> sympy.Rational | None:
    """The single numeric value written in `text` ("$1,200", "-3/4", "9 (apples)"), else None.

    A leading minus sign is honoured; when several numbers appear the text is
    ambiguous and None is returned, except for a unit tail such as "5 km/h".
    """
    s = text.strip() if isinstance(text, str) else str(text)
    if not s:
        return None
    sign = 1
    if s[0] in "-−":
        sign, s = -1, s[1:].lstrip()
    quantities = [q for q in find_quantities(s) if not q.word] or find_quantities(s)
    if not quantities:
        # Scientific notation such as 1e+06 from float-valued datasets.
        try:
            return sign * sympy.Rational(s)
        except (TypeError, ValueError, SyntaxError, sympy.SympifyError):
            return None
    first = quantities[0]
    if s[:first.start].strip(CURRENCY + " ") or (len(quantities) > 1 and any(q.word for q in quantities[:1])):
        return None
    if "e" in s[first.end:first.end + 1].lower():
        try:
            return sign * sympy.Rational(s[first.start:].split()[0])
        except (TypeError, ValueError, SyntaxError, sympy.SympifyError):
            return None
    return sign * first.value
