"""Reference graphs from GSM8K's calculator annotations.

    >>> g = reference_graph(get("gsm8k/test/0"))
    >>> print(render(g))                                        # doctest: +SKIP
    Janet’s ducks lay [16]q0 eggs per day. She eats [three]q1 … with [four]q2 …
    s0 = sub(q0, q1, q2)              16 - 3 - 4 = 9
    s1 = mul(s0, q3)                  9 * 2 = 18   <- answer

Each `<<expr=result>>` annotation is parsed with a real expression parser
(Python's `ast`, the grammar sympy's own parser builds on) and evaluated in
sympy. A chain of one operator becomes one step (16-3-4 is sub(16, 3, 4));
a nested sub-expression becomes its own step first (2*(3+4) is add, then mul).

Each literal is then linked to where it came from: an earlier step's result
(matching exactly, or as the solution rounded it), a mention in the question
(20% also matches 0.2), or, if neither, an orphan constant. When a value has
several possible sources the first is chosen and the others are kept as
`alternatives`: attention, later, says which mention the teacher used.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass

import sympy

from .answer import answers_match
from .config import ExecutorConfig
from .data import Problem, get  # noqa: F401 - `get` is used by the docstring example
from .errors import BadInput
from .executor import ExecFailure, evaluate_step, execute
from .graph import Graph, Op, Operand, Source, Step, render  # noqa: F401
from .numbers import find_quantities, split_division

_OPS = {ast.Add: Op.ADD, ast.Sub: Op.SUB, ast.Mult: Op.MUL, ast.Div: Op.DIV, ast.Pow: Op.POW}
_LEFT_FOLD = {Op.SUB, Op.DIV}  # a-b-c = sub(a, b, c); a-(b-c) is not
_ASSOC = {Op.ADD, Op.MUL}


class AnnotationError(BadInput):
    """A solution whose annotations do not make a graph; `reason` is a short category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Annotation:
    expr: str
    result: str
    start: int  # span of "<<expr=result>>" in the solution
    end: int


def annotations(solution: str) -> list[Annotation]:
    """Every <<expr=result>> in a GSM8K solution, in order."""
    out, i = [], 0
    while (s := solution.find("<<", i)) >= 0:
        e = solution.find(">>", s)
        if e < 0:
            break
        body = solution[s + 2:e]
        expr, _, result = body.rpartition("=")
        out.append(Annotation(expr if _ else body, result if _ else "", s, e + 2))
        i = e + 2
    return out


_OPERATOR_CHARS = {"+": "+", "-": "-", "–": "-", "−": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/"}


def _arith_tokens(line: str) -> list[tuple[str, str, int, int]]:
    """Lex a line into (kind, text, start, end): num, op, eq, ( and ), or break for anything else."""
    # Percents stay as written ("96/150 * 100% = 64%"); the value check drops mixed forms.
    quantities = {q.start: q for q in find_quantities(line) if not q.word}
    tokens, i = [], 0
    while i < len(line):
        c = line[i]
        if i in quantities:
            q = quantities[i]
            parts = split_division(q)
            after_op = bool(tokens) and tokens[-1][0] == "op"  # "2 miles / 1/6 hour": a fraction operand
            if parts and not after_op:  # "20/4" opening arithmetic is a division, not 5
                num, den = parts
                tokens += [("num", str(num.value), num.start, num.end), ("op", "/", num.end, den.start),
                           ("num", str(den.value), den.start, den.end)]
            else:
                tokens.append(("num", str(q.value), q.start, q.end))  # percent: the number written
            i = q.end
        elif c.isspace():
            i += 1
        elif c in _OPERATOR_CHARS and not (c == "/" and line[i + 1:i + 2].isalpha()) and (c != "x" or (tokens and tokens[-1][0] == "num" and not line[i + 1:i + 2].isalpha())):
            tokens.append(("op", _OPERATOR_CHARS[c], i, i + 1))
            i += 1
        elif c in "=()":
            tokens.append(("eq" if c == "=" else c, c, i, i + 1))
            i += 1
        elif c.isalpha() or (c == "/" and line[i + 1:i + 2].isalpha()):  # "/tray" is a unit, not a division
            j = i + 1
            while j < len(line) and line[j].isalpha():
                j += 1
            tokens.append(("word", line[i:j], i, j))
            i = j
        else:
            tokens.append(("break", c, i, i + 1))
            while i < len(line) and not (line[i].isspace() or i in quantities):
                i += 1
    return tokens


def _is_restatement(expr: str) -> bool:
    """True for "<<8=8>>": an annotation that names a value without computing it."""
    try:
        return isinstance(ast.parse(expr.strip(), mode="eval").body, (ast.Constant, ast.UnaryOp))
    except SyntaxError:
        return False


def inline_arithmetic(solution: str) -> list[Annotation]:
    """Arithmetic written without <<>> ("20/4 = $5"), from lines with no computing annotation.

    Only `number (op number)+ = number` runs count (a unit word may trail a
    number: "42 minutes + 10 minutes = 52"), and only when the written
    result is what the left side computes (to the precision written).
    """
    out, offset = [], 0
    for line in solution.split("\n"):
        notes = annotations(line)
        if all(_is_restatement(a.expr) for a in notes) and not line.startswith("####"):
            for a in notes:  # "12 - 4 = <<8=8>>8": blank the restatement, keep offsets
                line = line[:a.start] + " " * (a.end - a.start) + line[a.end:]
            toks = _arith_tokens(line)
            for k, t in enumerate(toks):
                if t[0] != "eq" or k + 1 >= len(toks) or toks[k + 1][0] != "num":
                    continue
                j = k  # walk left over a well-formed expression
                while j > 0:
                    kind = toks[j - 1][0]
                    if kind in ("num", "op", "(", ")"):
                        j -= 1
                        continue
                    w = j - 1  # unit words may trail a number ("42 minutes + 10 minutes"), nowhere else
                    while w > 0 and toks[w - 1][0] == "word":
                        w -= 1
                    if kind == "word" and w > 0 and toks[w - 1][0] == "num" and toks[j][0] in ("op", "eq", ")"):
                        j = w
                        continue
                    break
                while j < k and toks[j][0] in ("op", ")"):
                    j += 1
                expr = "".join(tt[1] if tt[0] != "num" else f"({tt[1]})" if "/" in tt[1] else tt[1]
                               for tt in toks[j:k] if tt[0] != "word")
                if not any(tt[0] == "op" for tt in toks[j:k]):
                    continue
                try:
                    value = sympy.sympify(expr, rational=True)
                    written = sympy.Rational(toks[k + 1][1])
                except (sympy.SympifyError, TypeError, ValueError, SyntaxError, ZeroDivisionError):
                    continue
                places = len(toks[k + 1][1].partition(".")[2])
                if value.is_number and abs(value - written) <= sympy.Rational(1, 2 * 10**places):
                    out.append(Annotation(expr, toks[k + 1][1], offset + toks[j][2], offset + toks[k + 1][3]))
        offset += len(line) + 1
    return out


def _literal(node: ast.AST, source: str) -> sympy.Rational:
    """Exact value of a numeric literal from its source text (0.1 stays 1/10)."""
    text = ast.get_source_segment(source, node)
    return sympy.Rational(text.replace("_", ""))


class _Builder:
    """Turns annotation expressions into steps, linking literals to sources."""

    def __init__(self, question: str):
        self.quantities = find_quantities(question)
        self.steps: list[Step] = []
        self.values: list[sympy.Expr] = []  # exact result of each step so far
        self.written: list[sympy.Rational | None] = []  # result as the solution wrote it
        self.limits = ExecutorConfig()

    def link(self, value: sympy.Rational) -> Operand:
        sources: list[tuple[Source, int]] = []
        for k in range(len(self.steps) - 1, -1, -1):  # most recent result first
            if self.values[k] == value or self.written[k] == value:
                sources.append((Source.RESULT, k))
        for i, q in enumerate(self.quantities):
            if value in q.values():
                sources.append((Source.QUANTITY, i))
        if not sources:
            return Operand(Source.CONSTANT, value)
        (source, ref), rest = sources[0], sources[1:]
        return Operand(source, value, ref, rest)

    def operands(self, node: ast.AST, op: Op, source: str) -> list[Operand]:
        """Flatten a same-operator chain into one operand list."""
        if isinstance(node, ast.BinOp) and _OPS.get(type(node.op)) is op and op in _ASSOC | _LEFT_FOLD:
            left = self.operands(node.left, op, source)
            right = self.operands(node.right, op, source) if op in _ASSOC else [self.operand(node.right, source)]
            return left + right
        return [self.operand(node, source)]

    def operand(self, node: ast.AST, source: str) -> Operand:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return self.link(_literal(node, source))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return Operand(Source.CONSTANT, -_literal(node.operand, source))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return self.operand(node.operand, source)
        k = self.step(node, source, None, None)
        return Operand(Source.RESULT, self.values[k], k)

    def step(self, node: ast.AST, source: str, span, written) -> int:
        if not isinstance(node, ast.BinOp) or type(node.op) not in _OPS:
            raise AnnotationError("unsupported expression", repr(ast.get_source_segment(source, node)))
        op = _OPS[type(node.op)]
        if op is Op.POW:
            args = [self.operand(node.left, source), self.operand(node.right, source)]
        else:
            args = self.operands(node.left, op, source) + (
                self.operands(node.right, op, source) if op in _ASSOC else [self.operand(node.right, source)])
        step = Step(op, args, span, written)
        self.steps.append(step)
        try:
            self.values.append(evaluate_step(step, len(self.steps) - 1, self.values, self.limits))
        except ExecFailure as e:
            raise AnnotationError(f"annotation does not execute ({e.kind.value})", e.message) from None
        self.written.append(written)
        return len(self.steps) - 1


def _written_value(text: str):
    try:
        return sympy.Rational(text.strip().replace(",", ""))
    except (TypeError, ValueError, sympy.SympifyError):
        return None


def reference_graph(problem: Problem, goal_from_gold: bool = True) -> Graph:
    """The operation graph a GSM8K-style solution's annotations describe.

    The answer step is the last step whose value is the gold answer (with
    `goal_from_gold`; these graphs are training labels), else the last step.
    """
    if not problem.solution:
        raise AnnotationError("no reference solution", str(problem.id))
    b = _Builder(problem.question)
    notes = sorted(annotations(problem.solution) + inline_arithmetic(problem.solution), key=lambda a: a.start)
    if not notes:
        raise AnnotationError("no <<expr=result>> annotations", str(problem.id))
    for a in notes:
        expr = a.expr.strip()
        try:
            tree = ast.parse(expr, mode="eval").body
        except SyntaxError:
            raise AnnotationError("annotation does not parse", repr(a.expr)) from None
        written = _written_value(a.result)
        if _is_restatement(expr):  # no computation, so no step
            continue
        b.step(tree, expr, (a.start, a.end), written)
    if not b.steps:
        raise AnnotationError("no arithmetic steps (solved as an equation)", str(problem.id))
    answer = len(b.steps) - 1
    if goal_from_gold:
        matches = [k for k, v in enumerate(b.values) if answers_match(v, problem.answer)]
        answer = matches[-1] if matches else answer
    return Graph(problem.question, b.quantities, b.steps, answer, problem.id, problem.solution)


@dataclass
class Coverage:
    total: int
    ok: int
    reasons: Counter

    @property
    def percent(self) -> float:
        return 100.0 * self.ok / max(self.total, 1)

    def table(self) -> str:
        lines = [f"coverage: {self.percent:.2f}% ({self.ok}/{self.total} re-execute to the gold answer)"]
        for reason, n in self.reasons.most_common():
            lines.append(f"  {n:5d}  {reason}")
        return "\n".join(lines)


def check(problem: Problem) -> str | None:
    """None if the problem's reference graph re-executes to its gold answer, else the reason."""
    try:
        graph = reference_graph(problem)
    except AnnotationError as e:
        return e.reason
    run = execute(graph)
    if run.error:
        return f"executor error: {run.error.kind.value}"
    if answers_match(run.answer, problem.answer):
        return None
    return "last step differs from gold"


def coverage(problems: list[Problem], progress: bool = False) -> Coverage:
    from tqdm import tqdm

    reasons: Counter = Counter()
    ok = 0
    for p in tqdm(problems, desc="graphs", unit="problem", disable=not progress):
        reason = check(p)
        if reason is None:
            ok += 1
        else:
            reasons[reason] += 1
    return Coverage(len(problems), ok, reasons)
