import pytest

from mycelium.data import get, load
from mycelium.executor import execute
from mycelium.graph import Graph, Op, Source, render
from mycelium.reference import AnnotationError, annotations, coverage, inline_arithmetic, reference_graph


def test_first_gsm8k_test_problem():
    g = reference_graph(get("gsm8k/test/0"))
    assert [s.op for s in g.steps] == [Op.SUB, Op.MUL]
    s0, s1 = g.steps
    assert [(o.source, o.value) for o in s0.operands] == [(Source.QUANTITY, 16), (Source.QUANTITY, 3), (Source.QUANTITY, 4)]
    # "three" and "four" are word numerals in the question.
    assert [g.quantities[o.ref].text for o in s0.operands] == ["16", "three", "four"]
    assert (s1.operands[0].source, s1.operands[0].ref) == (Source.RESULT, 0)
    assert g.quantities[s1.operands[1].ref].text == "$2"
    run = execute(g)
    assert run.values == [9, 18] and run.answer == 18 and g.answer == 1


def test_render_marks_quantities_and_steps():
    g = reference_graph(get("gsm8k/test/0"))
    text = render(g, execute(g).values)
    assert "She eats [three]q1 for breakfast" in text
    assert "s0 = sub(q0, q1, q2)" in text and "16 - 3 - 4 = 9" in text
    assert "9 * 2 = 18   <- answer" in text


def test_json_round_trip():
    g = reference_graph(get("gsm8k/train/0"))
    back = Graph.from_json(g.dumps())
    assert back == g and execute(back).answer == 72


def test_repeated_value_is_recorded_as_ambiguous():
    # "six more digits ... six times as many": 24/6 could use either "six".
    g = reference_graph(get("gsm8k/train/48"))
    divisor = g.steps[0].operands[1]
    assert divisor.ambiguous and divisor.alternatives == [(Source.QUANTITY, 1)]
    assert [g.quantities[i].text for i in (divisor.ref, 1)] == ["six", "six"]


def test_nested_expression_becomes_two_steps():
    g = reference_graph(get("gsm8k/train/264"))
    s = g.steps[1]
    assert s.op is Op.MUL and [o.value for o in s.operands] == [600, 2, 2]


def test_orphan_constant():
    g = reference_graph(get("gsm8k/train/1"))  # 12/60: minutes per hour is in no sentence
    consts = [o for s in g.steps for o in s.operands if o.source is Source.CONSTANT]
    assert [c.value for c in consts] == [60]


def test_annotations_and_inline_arithmetic():
    sol = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nShe bought 4 tops for $20 so 20/4 = $5\n#### 5"
    assert [(a.expr, a.result) for a in annotations(sol)] == [("12/60", "0.2")]
    assert [(a.expr, a.result) for a in inline_arithmetic(sol)] == [("20/4", "5")]
    # unit words may trail numbers; a wrong result is no arithmetic
    assert [a.expr for a in inline_arithmetic("so 42 minutes + 10 minutes = 52 minutes")] == ["42+10"]
    assert inline_arithmetic("on 3 - 4 = 7 May") == []


def test_problem_without_annotations():
    p = load("gsm8k", "train")[0]
    with pytest.raises(AnnotationError, match="no <<expr=result>> annotations"):
        reference_graph(type(p)(p.id, p.dataset, p.split, p.question, p.answer, "They sold many.\n#### 72"))


@pytest.mark.slow
def test_coverage_of_gsm8k_train():
    c = coverage(load("gsm8k", "train"))
    assert c.total == 7473
    assert c.percent >= 96.0, c.table()
    assert set(c.reasons) <= {"last step differs from gold", "no arithmetic steps (solved as an equation)",
                              "no <<expr=result>> annotations", "unsupported expression"}
