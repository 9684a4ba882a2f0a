"""Answer comparison: is a predicted answer the gold one?

    >>> answers_match("1,200", "1200"), answers_match("$18.00", "18"), answers_match("9 (apples)", 9)
    (True, True, True)
    >>> answers_match("50%", "0.5"), answers_match("3/4", "0.75"), answers_match("17", "18")
    (True, True, False)
    >>> answers_match("\\\\frac{1}{2}", "0.5", latex=True)
    True

Numbers are read by the quantity lexer (thousands separators, decimals,
fractions, percents, currency) and units are dropped because the lexer reads
only the number. LaTeX answers (MATH) go to math-verify, which parses and
compares them with sympy under its own timeout.
"""

from __future__ import annotations

from typing import Any

import sympy

from .numbers import parse_number

REL_TOL = sympy.Rational(1, 10**6)  # a decimal written to 6 significant digits still matches


def to_number(x: Any) -> sympy.Expr | None:
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, sympy.Expr):
        return x if x.is_number else None
    if isinstance(x, int):
        return sympy.Integer(x)
    if isinstance(x, float):
        return sympy.nsimplify(x, rational=True) if x == x and abs(x) != float("inf") else None
    return parse_number(str(x))


def _close(a: sympy.Expr, b: sympy.Expr) -> bool:
    if a == b:
        return True
    try:
        diff = abs(sympy.N(a - b, 30))
        scale = max(abs(sympy.N(a, 30)), abs(sympy.N(b, 30)), 1)
        return bool(diff <= REL_TOL * scale)
    except (TypeError, ValueError):
        return False


def _percent_forms(text: Any) -> bool:
    return isinstance(text, str) and "%" in text


def answers_match(pred: Any, gold: Any, latex: bool = False) -> bool:
    """True when pred and gold name the same answer. Never raises."""
    if pred is None or gold is None:
        return False
    if latex:
        return latex_match(str(pred), str(gold))
    a, b = to_number(pred), to_number(gold)
    if a is None or b is None:
        return isinstance(pred, str) and isinstance(gold, str) and pred.strip() == gold.strip()
    if _close(a, b):
        return True
    # "50%" and 0.5 are the same answer written two ways.
    if _percent_forms(pred) and _close(a / 100, b):
        return True
    return _percent_forms(gold) and _close(a, b / 100)


def latex_match(pred: str, gold: str, timeout_s: int = 5) -> bool:
    """Equivalence of LaTeX answers with math-verify, e.g. \\frac{1}{2} and 0.5."""
    from math_verify import parse, verify

    wrap = lambda s: s if "$" in s or "\\boxed" in s else f"${s}$"  # noqa: E731
    try:
        return bool(verify(parse(wrap(gold), parsing_timeout=timeout_s), parse(wrap(pred), parsing_timeout=timeout_s),
                           timeout_seconds=timeout_s))
    except Exception:  # noqa: BLE001 - an unparseable answer is a wrong answer, not a crash
        return False
