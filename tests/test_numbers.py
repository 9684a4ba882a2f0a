import sympy

from mycelium.numbers import find_quantities, parse_number


def lex(text):
    return [(q.text, q.value) for q in find_quantities(text)]


def test_digits_separators_decimals_currency_percent():
    assert lex("She sells 1,200 at $2.50, 20% off, .5 kg and 3.75 m") == [
        ("1,200", 1200), ("$2.50", sympy.Rational(5, 2)), ("20%", 20), (".5", sympy.Rational(1, 2)),
        ("3.75", sympy.Rational(15, 4))]


def test_fractions_and_mixed_numbers():
    assert lex("Use 3/4 cup and 2 1/2 cups") == [("3/4", sympy.Rational(3, 4)), ("2 1/2", sympy.Rational(5, 2))]


def test_word_numerals_through_text2num():
    text = "She eats three for breakfast and bakes with twenty-five, one hundred and five more."
    assert lex(text) == [("three", 3), ("twenty-five", 25), ("one hundred and five", 105)]


def test_words_without_a_numeral_reading_stay_unparsed():
    assert lex("half as many, twice a dozen, a few") == []


def test_spans_point_at_the_text():
    text = "Janet’s ducks lay 16 eggs per day. She eats three for breakfast"
    for q in find_quantities(text):
        assert text[q.start:q.end] == q.text


def test_sentence_final_period_is_not_a_decimal():
    assert lex("It costs $5. Then 7.") == [("$5", 5), ("7", 7)]


def test_percent_quantity_offers_both_readings():
    (q,) = find_quantities("a 20% discount")
    assert q.percent and q.values() == (20, sympy.Rational(1, 5))


def test_parse_number_reads_answers():
    assert parse_number("$1,200.50") == sympy.Rational(2401, 2)
    assert parse_number("9 (apples)") == 9
    assert parse_number("-3/4") == sympy.Rational(-3, 4)
    assert parse_number("1e+06") == 10**6
    assert parse_number("12.0") == 12
    assert parse_number("no number") is None
    assert parse_number("") is None
