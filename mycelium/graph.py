"""Operation graphs: what a solution computes, and where each number came from.

    Janet’s ducks lay [16]q0 eggs per day. She eats [three]q1 for breakfast …
    with [four]q2. She sells the remainder … for [$2]q3 per fresh duck egg. …

    s0 = sub(q0, q1, q2)      16 - 3 - 4 = 9
    s1 = mul(s0, q3)          9 * 2 = 18      ← answer

A `Graph` is a list of `Step`s; a step applies one `Op` to operands, in order
(sub and div fold left: sub(a, b, c) = a - b - c). An `Operand` is a problem
quantity (a mention in the question, with its character span), an earlier
step's result, or a constant that neither supplies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

import sympy

from .errors import BadInput
from .numbers import Quantity


class Op(str, Enum):
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POW = "pow"

    @property
    def symbol(self) -> str:
        return {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "^"}[self.value]


class Source(str, Enum):
    QUANTITY = "quantity"  # ref: index into Graph.quantities
    RESULT = "result"  # ref: index of an earlier step
    CONSTANT = "constant"  # ref: None; the value stands alone


@dataclass
class Operand:
    source: Source
    value: sympy.Rational  # the value the solution used (20% may be used as 0.2)
    ref: int | None = None
    # Other (source, ref) readings of the same value, e.g. a number mentioned twice.
    alternatives: list[tuple[Source, int]] = field(default_factory=list)

    @property
    def ambiguous(self) -> bool:
        return bool(self.alternatives)

    def name(self) -> str:
        return {Source.QUANTITY: f"q{self.ref}", Source.RESULT: f"s{self.ref}"}.get(self.source, str(self.value))

    def to_json(self) -> dict:
        d = {"source": self.source.value, "value": str(self.value), "ref": self.ref}
        if self.alternatives:
            d["alternatives"] = [[s.value, r] for s, r in self.alternatives]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Operand":
        return cls(Source(d["source"]), sympy.Rational(d["value"]), d.get("ref"),
                   [(Source(s), r) for s, r in d.get("alternatives", [])])


@dataclass
class Step:
    op: Op
    operands: list[Operand]
    # Where the step is written in the reference solution (character span), if anywhere.
    span: tuple[int, int] | None = None
    annotated: sympy.Rational | None = None  # the result the solution wrote, if it wrote one

    def to_json(self) -> dict:
        return {"op": self.op.value, "operands": [o.to_json() for o in self.operands],
                "span": list(self.span) if self.span else None,
                "annotated": None if self.annotated is None else str(self.annotated)}

    @classmethod
    def from_json(cls, d: dict) -> "Step":
        return cls(Op(d["op"]), [Operand.from_json(o) for o in d["operands"]],
                   tuple(d["span"]) if d.get("span") else None,
                   None if d.get("annotated") is None else sympy.Rational(d["annotated"]))


@dataclass
class Graph:
    question: str
    quantities: list[Quantity]
    steps: list[Step]
    answer: int | None = None  # index of the step whose result is the answer
    problem_id: str | None = None
    solution: str | None = None

    def to_json(self) -> dict:
        return {"problem_id": self.problem_id, "question": self.question, "solution": self.solution,
                "quantities": [q.to_json() for q in self.quantities],
                "steps": [s.to_json() for s in self.steps], "answer": self.answer}

    @classmethod
    def from_json(cls, d: dict | str) -> "Graph":
        try:
            if isinstance(d, str):
                d = json.loads(d)
            return cls(d["question"], [Quantity.from_json(q) for q in d["quantities"]],
                       [Step.from_json(s) for s in d["steps"]], d.get("answer"), d.get("problem_id"), d.get("solution"))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise BadInput(f"not a graph: {e.__class__.__name__}: {e}") from None

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)


def marked_question(graph: Graph) -> str:
    """The question with each quantity mention bracketed and named: "[three]q1"."""
    out, last = [], 0
    for i, q in enumerate(graph.quantities):
        out += [graph.question[last:q.start], f"[{graph.question[q.start:q.end]}]q{i}"]
        last = q.end
    out.append(graph.question[last:])
    return "".join(out)


def _fmt(value) -> str:
    if isinstance(value, sympy.Rational) and not value.is_integer:
        decimal = sympy.Float(value, 12)
        return f"{float(decimal):g}" if value.q in (2, 4, 5, 8, 10, 20, 25, 50, 100) else str(value)
    return str(value)


def arithmetic(step: Step, result, values: list | None = None) -> str:
    """One step as plain arithmetic, "8 * 3 = 24": earlier results read from `values` where given."""
    arith = f" {step.op.symbol} ".join(_fmt(values[o.ref] if values and o.source is Source.RESULT else o.value)
                                      for o in step.operands)
    return arith + (f" = {_fmt(result)}" if result is not None else "")


def render(graph: Graph, values: list | None = None) -> str:
    """A readable page: the marked question, then one line per step."""
    lines = [marked_question(graph), ""]
    for k, step in enumerate(graph.steps):
        args = ", ".join(o.name() for o in step.operands)
        result = values[k] if values and k < len(values) else step.annotated
        notes = [f"{o.name()} ambiguous: also " + ", ".join(f"{'q' if s is Source.QUANTITY else 's'}{r}" for s, r in o.alternatives)
                 for o in step.operands if o.ambiguous]
        mark = "   <- answer" if k == graph.answer else ""
        lines.append(f"s{k} = {step.op.value}({args})".ljust(34) + arithmetic(step, result, values) + mark)
        lines += [" " * 6 + n for n in notes]
    return "\n".join(lines)
