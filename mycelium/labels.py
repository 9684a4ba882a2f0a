"""Distillation labels: reference graphs + teacher attention -> training examples for C1–C6.

    >>> ex = build_example(get("gsm8k/train/0"), store.get("gsm8k/train/0"), reading, constants)
    >>> [(s["op"], s["region_text"]) for s in ex["steps"]]
    [('div', 'then she sold half as many clips in May'), ('add', 'Natalia sold clips to 48 ...')]
    >>> ex["steps"][0]["operands"]
    [{'source': 'quantity', 'ref': 0, 'value': '48', ...}, {'source': 'constant', 'value': '2', ...}]

For every step of a problem's reference graph:
- its solution tokens (the line it is written on, up to the end of its
  arithmetic) give an IAF map over the problem, read through the provenance
  heads; clause expansion turns it into one region, a run of clauses (C1's
  relevance targets and, in step order, its plan targets; C2's input);
- its operation (C2), and its operands (C3): a problem mention, an earlier
  result, or a domain constant. When a value is mentioned more than once, the
  attention of the row that writes the operand decides which mention it is;
- which earlier steps feed it (C5); whether it is a bridging step, i.e. its
  attention mass on the problem is in the corpus's lowest quartile (C4);
- the answer step and the answer's type (C6).
The labelled graph is executed again and the example dropped unless it gives
the gold answer. Domain constants are values the solutions use that neither
the problem nor an earlier step supplies, kept when more than 80% of their
uses are such orphans: a table computed from the corpus (`constant_table`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .answer import answers_match
from .clauses import MAX_WIDTH, clause_span, parse, region_clauses
from .data import Problem
from .executor import execute
from .graph import Source
from .numbers import parse_number
from .quality import solution_numbers
from .reference import AnnotationError, annotations, reference_graph
from .signals import iaf, read, step_mass
from .trace import Trace, strip_annotations
from .viewer import Reading

REGIONS = ("attention", "anchored")
ORPHAN_SHARE = 0.8  # DESIGN.md: a constant is kept when > 80% of its uses are orphaned
BRIDGING_QUANTILE = 0.25


def constant_table(problems: list[Problem], min_uses: int = 5) -> list[dict]:
    """Values used by solutions, with how often they are orphans (neither in the problem nor computed)."""
    uses, orphan = Counter(), Counter()
    for p in problems:
        try:
            g = reference_graph(p)
        except AnnotationError:
            continue
        for step in g.steps:
            for o in step.operands:
                if o.source is Source.RESULT:
                    continue
                uses[o.value] += 1
                orphan[o.value] += o.source is Source.CONSTANT
    rows = [{"value": str(v), "uses": n, "orphaned": orphan[v], "orphan_share": orphan[v] / n,
             "kept": n >= min_uses and orphan[v] / n > ORPHAN_SHARE} for v, n in uses.items() if orphan[v]]
    return sorted(rows, key=lambda r: (-r["kept"], -r["orphaned"]))


def _original_to_stripped(solution: str):
    """Map character positions of a GSM8K solution to its annotation-free text (`strip_annotations`)."""
    cuts, removed = [], 0  # (start, end, characters removed up to and including this annotation)
    for a in annotations(solution):
        removed += a.end - a.start
        cuts.append((a.start, a.end, removed))

    def to_stripped(x: int) -> int:
        shift = 0
        for s, e, total in cuts:
            if x >= e:
                shift = total
            elif x >= s:  # inside an annotation: where it was cut out
                return s - shift
        return x - shift

    return to_stripped


def answer_type(gold: str) -> str:
    v = parse_number(gold)
    if v is None:
        return "other"
    return "integer" if v.is_integer else "decimal" if "." in gold else "fraction"


def anchor_run(run: tuple[int, int] | None, operand_clauses: list[int], width: int = MAX_WIDTH) -> tuple[int, int] | None:
    """A step's run of clauses widened to the clauses of the quantities it uses, while it stays `width` clauses.

    Attention alone leaves a third of a step's quantity operands outside its region (GSM8K, SmolLM2-135M);
    the operands are the step's own provenance, so the region that C1 learns to plan and C3 points from
    covers them. Too wide: the operands' own run if that fits, else attention's run unchanged.
    """
    if not operand_clauses:
        return run
    lo, hi = min(operand_clauses), max(operand_clauses)
    if run is not None and max(hi, run[1]) - min(lo, run[0]) < width:
        return min(lo, run[0]), max(hi, run[1])
    return (lo, hi) if hi - lo < width else run


def build_example(problem: Problem, trace: Trace, reading: Reading, constants: set[str],
                  regions: str = "attention") -> dict | None:
    """One labelled example, or None when its graph does not re-execute to gold.

    regions: "attention" (the run of clauses the step's IAF map points at) or "anchored" (that run widened to
    the clauses of the step's quantity operands, `anchor_run`)."""
    if regions not in REGIONS:
        raise ValueError(f"unknown regions {regions!r}; use one of {', '.join(REGIONS)}")
    try:
        graph = reference_graph(problem)
    except AnnotationError:
        return None
    a = read(trace, reading.iaf_heads, contrast=True)  # [sol, prob]
    clauses = parse(problem.question)
    to_stripped = _original_to_stripped(problem.solution)
    stripped = strip_annotations(problem.solution)
    if stripped != trace.solution:
        return None  # the trace was made with another solution text
    mention_tokens = [np.nonzero((trace.problem_offsets[:, 0] < q.end) & (trace.problem_offsets[:, 1] > q.start))[0]
                      for q in graph.quantities]
    numbers = solution_numbers(stripped)
    steps = []
    for k, step in enumerate(graph.steps):
        end = to_stripped(step.span[1]) if step.span else len(stripped)
        start = stripped.rfind("\n", 0, max(end - 1, 0)) + 1
        toks = np.nonzero((trace.solution_offsets[:, 0] >= start) & (trace.solution_offsets[:, 0] < end))[0]
        if not len(toks):
            return None
        s0, s1 = int(toks[0]), int(toks[-1]) + 1
        w = iaf(a, s0, s1)
        weights = {int(trace.problem_offsets[j][0]): float(w[j]) for j in np.argsort(-w)[:8]}
        run = region_clauses(clauses, weights)
        operands = []
        for o in step.operands:
            ref = o.ref
            if o.source is Source.QUANTITY and o.alternatives:
                # Attention decides which mention: the row before the number as the solution writes it.
                candidates = [o.ref] + [r for s, r in o.alternatives if s is Source.QUANTITY]
                written = [n for n in numbers if start <= n.start < end and n.value == o.value]
                row_tok = np.nonzero(trace.solution_offsets[:, 0] >= written[0].start)[0] if written else []
                if len(row_tok) and row_tok[0] > 0:
                    row = a[row_tok[0] - 1]
                    ref = max(candidates, key=lambda c: row[mention_tokens[c]].sum() if len(mention_tokens[c]) else -1)
            source = o.source.value
            if o.source is Source.CONSTANT:
                source = "constant" if str(o.value) in constants else "orphan"
            operands.append({"source": source, "ref": ref, "value": str(o.value),
                             "ambiguous": o.ambiguous})
            if o.source is Source.QUANTITY:
                o.ref = ref
        if regions == "anchored":
            used = [clauses.clause_at(graph.quantities[o.ref].start) for o in step.operands
                    if o.source is Source.QUANTITY and o.ref is not None]
            run = anchor_run(run, [k for k in used if k is not None])
        reg = clause_span(clauses, *run) if run else None
        mass = step_mass(trace, s0, s1)
        steps.append({"op": step.op.value, "tokens": [s0, s1], "region": list(reg) if reg else None,
                      "clauses": list(run) if run else None,
                      "region_text": problem.question[reg[0]:reg[1]] if reg else None,
                      "operands": operands, "depends_on": sorted({o.ref for o in step.operands if o.source is Source.RESULT}),
                      "problem_mass": mass["problem"], "solution_mass": mass["solution"]})
    run = execute(graph)
    if not run.ok or not answers_match(run.answer, problem.answer):
        return None
    relevance = sorted({tuple(s["region"]) for s in steps if s["region"]})
    return {"id": problem.id, "question": problem.question, "answer": problem.answer,
            "quantities": [q.to_json() for q in graph.quantities], "clauses": [list(c) for c in clauses.spans],
            "steps": steps,
            "relevance": [list(r) for r in relevance], "goal": {"step": graph.answer, "type": answer_type(problem.answer)},
            "graph": graph.to_json()}


def mark_bridging(examples: list[dict]) -> float:
    """Flag the steps whose problem mass is in the corpus's lowest quartile; return the threshold."""
    masses = [s["problem_mass"] for ex in examples for s in ex["steps"]]
    threshold = float(np.quantile(masses, BRIDGING_QUANTILE)) if masses else 0.0
    for ex in examples:
        for s in ex["steps"]:
            s["bridging"] = s["problem_mass"] <= threshold
    return threshold



def build(problems: dict[str, Problem], traces, reading: Reading, constants: set[str], progress: bool = True,
          regions: str = "attention"):
    """(examples, dropped reasons) for every trace whose problem is known."""
    from tqdm import tqdm

    examples, dropped = [], Counter()
    for trace in tqdm(traces, desc="labels", unit="problem", disable=not progress):
        problem = problems.get(trace.id)
        if problem is None:
            dropped["problem not in the dataset"] += 1
            continue
        ex = build_example(problem, trace, reading, constants, regions)
        if ex is None:
            dropped["graph does not re-execute to gold"] += 1
        else:
            examples.append(ex)
    return examples, dropped
