"""The self-improving loop (DESIGN.md §8): student graphs that execute to gold become training examples.

    >>> solver = Solver.load("runs/main/models/minilm", SolverConfig(keep_graphs=True))
    >>> p = get("gsm8k/train/688")  # Trent caught 180 tadpoles then let 75% of them go. How many did he keep?
    >>> [ex], counts = harvest([p], [solver.solve(p.question)], [parse(p.question)], teacher={})
    >>> [(s["op"], s["region_text"], [o["value"] for o in s["operands"]]) for s in ex["steps"]]
    [('mul', '75% of them go', ['180', '75', '1/100']), ('sub', 'Trent caught 180 tadpoles then', ['180', '135'])]

The students (the trained specialists and the solver around them) answer
training problems from the question text alone, exactly as at test time. The
gold answer is read afterwards, only to keep a candidate: the best-ranked
candidate graph whose answer matches gold becomes a labels.jsonl row in the
same format `labels.build_example` writes, with `origin: "student"`. Its
regions are the runs of clauses the solver's plan read, its operands what
C3 pointed at, its answer step what C6 chose. It carries no attention, so it
has no bridging flag and C4 does not learn from it.

A student graph joins the training set when the problem has no teacher
label (the teacher's graph did not re-execute), or when it differs from the
teacher's graph: another way to the same answer. The same steps with the
operands of a sum or product swapped are the same graph, and a graph equal
to the teacher's adds nothing and is skipped. The executor is the only
validator, so a graph that reaches gold by coincidence joins too (for
"Bob shucks 10 oysters in 5 minutes; how many in 2 hours?", 60 × 2 × 2 = 240).

    mycelium improve --run runs/main --model runs/main/models/minilm   # writes runs/main/labels/students.jsonl
    mycelium train --run runs/main --students runs/main/labels/students.jsonl --out runs/main/models/minilm-r1
"""

from __future__ import annotations

from collections import Counter

from .answer import answers_match
from .clauses import Clauses
from .data import Problem
from .executor import execute
from .graph import Graph, Source
from .labels import answer_type


def graph_key(steps: list[dict], goal: int | None) -> tuple:
    """What tells two labelled graphs apart: per step its operation and operands (mentions by value, in any
    order for add and mul), and the answer step."""
    def operands(s):
        keys = [("s", o["ref"]) if o["source"] == "result" else ("v", o["value"]) for o in s["operands"]]
        return tuple(sorted(keys) if s["op"] in ("add", "mul") else keys)

    return tuple((s["op"], operands(s)) for s in steps), goal


def _clause_run(clauses: Clauses, span: tuple[int, int] | None) -> list[int] | None:
    """The run of clauses (first, last) a solver region covers; the plan's regions start and end on clauses."""
    if span is None:
        return None
    inside = [k for k, (a, b) in enumerate(clauses.spans) if a >= span[0] and b <= span[1]]
    return [inside[0], inside[-1]] if inside else None


def to_example(problem: Problem, graph: Graph, clauses: Clauses) -> dict:
    """A student graph as a labels.jsonl row (`labels.build_example`'s format, without attention fields)."""
    values = execute(graph).values  # an earlier step's result is written as its value, as the teacher's labels do
    steps = []
    for s in graph.steps:
        run = _clause_run(clauses, s.span)
        operands = [{"source": o.source.value, "ref": o.ref if o.source is not Source.CONSTANT else None,
                     "value": str(values[o.ref] if o.source is Source.RESULT and o.ref < len(values) else o.value),
                     "ambiguous": False} for o in s.operands]
        steps.append({"op": s.op.value, "region": list(s.span) if s.span else None, "clauses": run,
                      "region_text": problem.question[s.span[0]:s.span[1]] if s.span else None,
                      "operands": operands,
                      "depends_on": sorted({o.ref for o in s.operands if o.source is Source.RESULT})})
    relevance = sorted({tuple(s["region"]) for s in steps if s["region"]})
    return {"id": problem.id, "question": problem.question, "answer": problem.answer, "origin": "student",
            "quantities": [q.to_json() for q in graph.quantities], "clauses": [list(c) for c in clauses.spans],
            "steps": steps, "relevance": [list(r) for r in relevance],
            "goal": {"step": graph.answer, "type": answer_type(problem.answer)},
            "graph": {**graph.to_json(), "problem_id": problem.id}}


def best_correct(candidates: list[dict], gold: str) -> Graph | None:
    """The best-ranked candidate graph that executes to gold (candidates come ranked, best first)."""
    for c in candidates:
        if c.get("ok") and c.get("graph") is not None and answers_match(c["answer"], gold):
            return c["graph"]
    return None


def harvest(problems: list[Problem], solutions, clauses: list[Clauses], teacher: dict[str, dict]
            ) -> tuple[list[dict], Counter]:
    """Student examples for the problems, and a count of what happened to each problem.

    solutions: the solver's answers to the problems' questions (with `keep_graphs`), in order; clauses: each
    question's clauses; teacher: labels.jsonl rows by problem id.
    """
    examples, counts = [], Counter()
    for p, sol, cl in zip(problems, solutions, clauses):
        graph = best_correct(sol.candidates, p.answer)
        if graph is None:
            counts["no candidate reaches gold"] += 1
            continue
        ex = to_example(p, graph, cl)
        label = teacher.get(p.id)
        if label is not None and graph_key(label["steps"], label["goal"]["step"]) == graph_key(
                ex["steps"], ex["goal"]["step"]):
            counts["same graph as the teacher's"] += 1
            continue
        counts["joins: no teacher label" if label is None else "joins: another graph than the teacher's"] += 1
        ex["top_answer"] = answers_match(sol.answer, p.answer)  # the solver's own answer was gold, not only a candidate
        counts["of which the solver's top answer"] += ex["top_answer"]
        examples.append(ex)
    return examples, counts
