import time

import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from mycelium.config import ExecutorConfig
from mycelium.executor import ErrorKind, execute
from mycelium.graph import Graph, Op, Operand, Source, Step


def const(v):
    return Operand(Source.CONSTANT, sympy.Rational(v))


def result(k):
    return Operand(Source.RESULT, sympy.Integer(0), k)


def graph(*steps):
    return Graph("q", [], list(steps))


def test_exact_arithmetic():
    run = execute(graph(Step(Op.ADD, [const("0.1"), const("0.2")]), Step(Op.MUL, [result(0), const(10)])))
    assert run.ok and run.values == [sympy.Rational(3, 10), 3] and run.answer == 3


def test_sub_and_div_fold_left():
    run = execute(graph(Step(Op.SUB, [const(16), const(3), const(4)]), Step(Op.DIV, [const(100), const(2), const(5)])))
    assert run.values == [9, 10]


def test_tower_of_powers_is_refused_fast():
    t = time.monotonic()
    run = execute(graph(Step(Op.POW, [const(10), const(10)]), Step(Op.POW, [const(10), result(0)])))
    assert time.monotonic() - t < 1.0
    assert run.error.kind is ErrorKind.OVERFLOW and run.error.step == 1


def test_roots_of_huge_degree_are_refused_fast():
    # Found by the random test below: sympy took 26 s and most of the machine's memory on this one.
    t = time.monotonic()
    run = execute(graph(Step(Op.POW, [const("-5087767338013615272847474688/6017"), const("-1/34359738368")])))
    assert time.monotonic() - t < 1.0 and run.error.kind is ErrorKind.NON_FINITE
    positive = execute(graph(Step(Op.POW, [const("5087767338013615272847474688/6017"), const("1/34359738368")])))
    assert positive.error.kind is ErrorKind.OVERFLOW
    assert execute(graph(Step(Op.POW, [const(27), const("2/3")]))).answer == 9
    assert execute(graph(Step(Op.POW, [const(-2), const(3)]))).answer == -8


def test_division_by_zero_is_typed():
    run = execute(graph(Step(Op.SUB, [const(2), const(2)]), Step(Op.DIV, [const(1), result(0)])))
    assert run.error.kind is ErrorKind.DIV_ZERO and run.answer is None


def test_non_real_is_non_finite():
    run = execute(graph(Step(Op.POW, [const(-8), const("1/2")])))
    assert run.error.kind is ErrorKind.NON_FINITE


def test_forward_reference_and_bad_answer():
    assert execute(graph(Step(Op.ADD, [result(3), const(1)]))).error.kind is ErrorKind.BAD_GRAPH
    g = graph(Step(Op.ADD, [const(1), const(1)]))
    g.answer = 7
    assert execute(g).error.kind is ErrorKind.BAD_GRAPH


def test_a_shared_memo_gives_the_same_runs_and_computes_each_step_once(monkeypatch):
    import mycelium.executor as executor

    graphs = [graph(Step(Op.SUB, [const(2), const(2)]), Step(Op.DIV, [const(1), result(0)])),  # fails at step 1
              graph(Step(Op.SUB, [const(2), const(2)]), Step(Op.ADD, [result(0), const(5)])),
              graph(Step(Op.ADD, [const(0), const(5)]), Step(Op.DIV, [const(1), const(0)]))]  # the same failure
    alone = [execute(g) for g in graphs]
    calls = []
    real_apply = executor.apply
    monkeypatch.setattr(executor, "apply", lambda op, args, limits: calls.append(op) or real_apply(op, args, limits))
    memo = {}
    shared = [execute(g, memo=memo) for g in graphs]
    for a, b in zip(alone, shared):
        assert (a.values, a.answer, a.error and (a.error.kind, a.error.step)) == \
               (b.values, b.answer, b.error and (b.error.kind, b.error.step))
    assert len(calls) == 3  # 2 - 2, 1 / 0 and 0 + 5, each asked twice and computed once


def test_size_caps():
    many = graph(*[Step(Op.ADD, [const(1), const(1)]) for _ in range(300)])
    assert execute(many).error.kind is ErrorKind.TOO_LARGE
    wide = graph(Step(Op.ADD, [const(1)] * 100))
    assert execute(wide).error.kind is ErrorKind.TOO_LARGE


def test_time_budget():
    steps = [Step(Op.MUL, [const("1.0000001"), const(3)])] + [Step(Op.MUL, [result(k), const("1.01")]) for k in range(200)]
    run = execute(graph(*steps), ExecutorConfig(time_budget_s=0.0, max_digits=10**6))
    assert run.error.kind is ErrorKind.TIMEOUT


values = st.one_of(st.integers(-10**80, 10**80), st.fractions().map(str), st.sampled_from(["0", "1e400", "-0.5"]))


@st.composite
def random_graphs(draw):
    steps = []
    for k in range(draw(st.integers(1, 8))):
        ops = []
        for _ in range(draw(st.integers(0, 4))):
            if k and draw(st.booleans()):
                ops.append(Operand(Source.RESULT, sympy.Integer(0), draw(st.integers(-1, k + 1))))
            else:
                ops.append(Operand(Source.CONSTANT, sympy.Rational(draw(values))))
        steps.append(Step(draw(st.sampled_from(list(Op))), ops))
    return Graph("q", [], steps, draw(st.one_of(st.none(), st.integers(-2, 10))))


@settings(max_examples=300, deadline=None)
@given(random_graphs())
def test_never_raises_never_hangs(g):
    t = time.monotonic()
    run = execute(g)
    assert time.monotonic() - t < 2.0
    assert run.ok or run.error.kind in ErrorKind
