"""The symbolic executor: runs a graph in exact arithmetic, within limits.

    >>> from mycelium.data import get
    >>> from mycelium.reference import reference_graph
    >>> run = execute(reference_graph(get("gsm8k/test/0")))
    >>> run.values, run.answer, run.error
    ([9, 18], 18, None)

Values are sympy Rationals (exact: 0.1 + 0.2 is 3/10). Every operation is
checked against the caps *before* it is computed, so no single step can run
away (10**10**10 is refused from the sizes of its operands, not attempted), and
a wall-clock budget bounds the graph as a whole. Failures come back as an
`ExecError` with a kind; `execute` never raises for anything a graph contains.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from dataclasses import dataclass, field
from enum import Enum

import sympy

from .config import ExecutorConfig
from .graph import Graph, Op, Source


class ErrorKind(str, Enum):
    DIV_ZERO = "div_zero"
    NON_FINITE = "non_finite"  # infinite, NaN or complex
    OVERFLOW = "overflow"  # a value or exponent over the caps
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"  # graph over the step or operand caps
    BAD_GRAPH = "bad_graph"  # forward reference, missing operand, unknown op
    INTERNAL = "internal"  # sympy raised: reported, never propagated


@dataclass(frozen=True)
class ExecError:
    kind: ErrorKind
    step: int | None
    message: str

    def __str__(self) -> str:
        where = f"step s{self.step}: " if self.step is not None else ""
        return f"{self.kind.value}: {where}{self.message}"


@dataclass
class Execution:
    values: list = field(default_factory=list)  # one per executed step
    answer: sympy.Expr | None = None
    error: ExecError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class ExecFailure(Exception):
    """Raised inside the executor; `execute` turns it into an ExecError."""

    def __init__(self, kind: ErrorKind, message: str):
        self.kind, self.message = kind, message


def _digits(x: sympy.Expr) -> float:
    """log10 of the larger of |numerator| and denominator: the cost of carrying x."""
    if x == 0:
        return 0.0
    if isinstance(x, sympy.Rational):
        return max(math.log10(abs(int(x.p))), math.log10(int(x.q)))
    return abs(float(sympy.log(abs(x), 10).evalf(15)))


def _check(x: sympy.Expr, limits: ExecutorConfig) -> sympy.Expr:
    if not isinstance(x, sympy.Rational):  # nearly every value is one: finite and real by construction
        if x.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan) or not x.is_finite:
            raise ExecFailure(ErrorKind.NON_FINITE, f"result {x} is not finite")
        if x.is_real is False:
            raise ExecFailure(ErrorKind.NON_FINITE, f"result {x} is not a real number")
    if _digits(x) > limits.max_digits:
        raise ExecFailure(ErrorKind.OVERFLOW, f"result has more than {limits.max_digits} digits")
    return x


def _pow(base: sympy.Expr, exp: sympy.Expr, limits: ExecutorConfig) -> sympy.Expr:
    if base == 0 and exp.is_negative:
        raise ExecFailure(ErrorKind.DIV_ZERO, "zero to a negative power")
    if abs(exp) > limits.max_exponent:
        raise ExecFailure(ErrorKind.OVERFLOW, f"exponent {exp} over the cap {limits.max_exponent}")
    if not exp.is_integer:
        # sympy's principal root of a negative number is complex (refused anyway), and roots of
        # huge degree can take sympy tens of seconds and gigabytes to factor.
        if base.is_negative:
            raise ExecFailure(ErrorKind.NON_FINITE, f"non-integer power {exp} of a negative number")
        if isinstance(exp, sympy.Rational) and exp.q > limits.max_root:
            raise ExecFailure(ErrorKind.OVERFLOW, f"root of degree {exp.q} over the cap {limits.max_root}")
    if base != 0 and _digits(base) * float(abs(exp)) > limits.max_digits:
        raise ExecFailure(ErrorKind.OVERFLOW, f"power would have more than {limits.max_digits} digits")
    return sympy.Pow(base, exp)


def apply(op: Op, args: list[sympy.Expr], limits: ExecutorConfig) -> sympy.Expr:
    """One operation on checked values; the result is checked too."""
    if not args:
        raise ExecFailure(ErrorKind.BAD_GRAPH, "no operands")
    # Pairwise operators, not sympy.Add(*args)/Mul(*args): on Rationals they skip the general flattening
    # (5-8x faster uncached) and give the same values; other expressions canonicalise the same way.
    if op is Op.ADD:
        out = functools.reduce(operator.add, args)
    elif op is Op.SUB:
        out = args[0] - functools.reduce(operator.add, args[1:], sympy.Integer(0))
    elif op is Op.MUL:
        if sum(_digits(a) for a in args) > 2 * limits.max_digits:
            raise ExecFailure(ErrorKind.OVERFLOW, f"product would have more than {limits.max_digits} digits")
        out = functools.reduce(operator.mul, args)
    elif op is Op.DIV:
        if any(a == 0 for a in args[1:]):
            raise ExecFailure(ErrorKind.DIV_ZERO, "division by zero")
        out = args[0] / functools.reduce(operator.mul, args[1:], sympy.Integer(1))
    elif op is Op.POW:
        if len(args) != 2:
            raise ExecFailure(ErrorKind.BAD_GRAPH, f"pow takes 2 operands, got {len(args)}")
        out = _pow(args[0], args[1], limits)
    else:
        raise ExecFailure(ErrorKind.BAD_GRAPH, f"unknown operation {op!r}")
    return _check(out if isinstance(out, sympy.Rational) or not out.has(sympy.Float) else sympy.nsimplify(out), limits)


def evaluate_step(step, k: int, values: list, limits: ExecutorConfig, memo: dict | None = None) -> sympy.Expr:
    """Value of step k given the values of steps 0..k-1; raises ExecFailure. `memo` keeps results by (op, args)."""
    if len(step.operands) > limits.max_operands:
        raise ExecFailure(ErrorKind.TOO_LARGE, f"{len(step.operands)} operands, cap {limits.max_operands}")
    args = []
    for o in step.operands:
        if o.source is Source.RESULT:
            if o.ref is None or not 0 <= o.ref < min(k, len(values)):
                raise ExecFailure(ErrorKind.BAD_GRAPH, f"operand refers to s{o.ref}, not an earlier step")
            args.append(values[o.ref])
        elif memo is None:
            args.append(_check(sympy.sympify(o.value), limits))
        else:  # a question's quantities and constants recur in every candidate: check each once
            if ("value", o.value) not in memo:
                memo["value", o.value] = _check(sympy.sympify(o.value), limits)
            args.append(memo["value", o.value])
    try:
        op = Op(step.op)
    except ValueError:
        raise ExecFailure(ErrorKind.BAD_GRAPH, f"unknown operation {step.op!r}") from None
    if memo is None:
        return apply(op, args, limits)
    key = (op, tuple(args))  # sympy numbers hash by value
    if key not in memo:
        try:
            memo[key] = apply(op, args, limits)
        except ExecFailure as e:
            memo[key] = e
    if isinstance(memo[key], ExecFailure):
        raise memo[key]
    return memo[key]


def execute(graph: Graph, limits: ExecutorConfig | None = None, memo: dict | None = None) -> Execution:
    """Run every step in order; stop at the first error, which is returned, not raised.

    Graphs of one question share most of their steps: pass the same `memo` dict to compute each step once."""
    limits = limits or ExecutorConfig()
    t0 = time.monotonic()
    run = Execution()
    k = None
    try:
        if len(graph.steps) > limits.max_steps:
            raise ExecFailure(ErrorKind.TOO_LARGE, f"{len(graph.steps)} steps, cap {limits.max_steps}")
        for k, step in enumerate(graph.steps):
            if time.monotonic() - t0 > limits.time_budget_s:
                raise ExecFailure(ErrorKind.TIMEOUT, f"over the {limits.time_budget_s}s budget")
            run.values.append(evaluate_step(step, k, run.values, limits, memo))
        k = None
        if graph.answer is not None:
            if not 0 <= graph.answer < len(run.values):
                raise ExecFailure(ErrorKind.BAD_GRAPH, f"answer refers to s{graph.answer}, which does not exist")
            run.answer = run.values[graph.answer]
        elif run.values:
            run.answer = run.values[-1]
    except ExecFailure as e:
        run.error = ExecError(e.kind, k, e.message)
    except Exception as e:  # noqa: BLE001 - the executor must never crash its caller
        run.error = ExecError(ErrorKind.INTERNAL, k, f"{e.__class__.__name__}: {e}")
    run.seconds = time.monotonic() - t0
    if run.error is None and run.seconds > limits.time_budget_s:
        run.error = ExecError(ErrorKind.TIMEOUT, None, f"over the {limits.time_budget_s}s budget")
    return run
