import sympy

from mycelium.answer import answers_match


def test_numeric_forms():
    assert answers_match("1,200", "1200")
    assert answers_match("$18.00", "18")
    assert answers_match("9 (apples)", 9)
    assert answers_match(sympy.Rational(3, 4), "0.75")
    assert answers_match(2.5, "5/2")
    assert not answers_match("17", "18")
    assert not answers_match(None, "18")


def test_percent_both_ways():
    assert answers_match("50%", "0.5")
    assert answers_match("0.5", "50%")
    assert answers_match("50%", "50")


def test_units_are_dropped_by_parsing():
    assert answers_match("12 km", "12")
    assert answers_match("5 hours", "5.0")


def test_latex_with_math_verify():
    assert answers_match("\\frac{1}{2}", "0.5", latex=True)
    assert answers_match("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", latex=True)
    assert not answers_match("\\frac{1}{3}", "0.5", latex=True)
    assert not answers_match("\\frac{", "0.5", latex=True)  # unparseable: wrong, never a crash
