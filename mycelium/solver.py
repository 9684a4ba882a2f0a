"""The solver: question text in, answer + operation graph + source spans out. No chain-of-thought.

    >>> solver = Solver.load("runs/main/models/minilm")
    >>> s = solver.solve("Tom has 3 boxes with 4 apples each. How many apples does he have?")
    >>> s.answer, [st.op.value for st in s.graph.steps]
    (12, ['mul'])

1. C1 scores the question's tokens; the clauses (the same spaCy clauses the
   training regions were expanded to) whose mean relevance is over 0.5 are
   the spans.
2. Candidate groupings of spans into steps are enumerated (search, not
   learning: the space is small): each span a step, each adjacent pair merged,
   each span used twice, each span dropped.
3. Every step of every candidate goes through C2/C3/C5/C6 in one batched
   forward pass.
4. Each candidate becomes a graph (C2's operation, C3's two best operands
   among mentions, earlier steps and constants, C6's answer step) and is
   executed; candidates are ranked by validity, then by the summed log
   probability of their choices. The best is returned with its graph and spans.
The solver sees the question text only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sympy
import torch

from .data import check_question
from .executor import execute
from .graph import Graph, Op, Operand, Source, Step
from .numbers import find_quantities
from .specialists import MAX_STEPS, OPS, encode
from .training import load_model


@dataclass
class Solution:
    question: str
    answer: sympy.Expr | None
    graph: Graph | None
    spans: list[tuple[int, int]]  # C1's spans, character ranges of the question
    score: float = float("-inf")
    candidates: list[dict] = field(default_factory=list)  # every candidate's answer and score (diagnostics)
    reason: str | None = None  # why there is no answer

    def to_json(self) -> dict:
        return {"answer": None if self.answer is None else str(self.answer), "reason": self.reason,
                "graph": self.graph.to_json() if self.graph else None, "spans": [list(s) for s in self.spans],
                "score": self.score, "candidates": [{**c, "answer": str(c["answer"])} for c in self.candidates]}


def groupings(spans: list[tuple[int, int]], limit: int = 16) -> list[list[tuple[int, int]]]:
    """Candidate step regions: the spans, adjacent pairs merged, each span twice, each dropped."""
    if len(spans) > MAX_STEPS - 1:  # keep the longest, in text order
        keep = sorted(sorted(spans, key=lambda s: s[0] - s[1])[: MAX_STEPS - 1])
        spans = keep
    out = [list(spans)]
    for i in range(len(spans) - 1):
        out.append(spans[:i] + [(spans[i][0], spans[i + 1][1])] + spans[i + 2:])
    for i in range(len(spans)):
        out.append(spans[:i + 1] + [spans[i]] + spans[i + 1:])
    for i in range(len(spans)):
        if len(spans) > 1:
            out.append(spans[:i] + spans[i + 1:])
    seen, unique = set(), []
    for g in out:
        key = tuple(g)
        if g and key not in seen and len(g) <= MAX_STEPS:
            seen.add(key)
            unique.append(g)
    return unique[:limit]


class Solver:
    def __init__(self, model):
        self.model = model.eval()

    @classmethod
    def load(cls, folder: str | Path) -> "Solver":
        return cls(load_model(Path(folder)))

    @torch.no_grad()
    def spans(self, question: str) -> list[tuple[int, int]]:
        """The question's clauses that C1 finds operation-bearing (mean token relevance over 0.5)."""
        from .clauses import parse

        enc = self.model.tokenizer(question, return_offsets_mapping=True, truncation=True,
                                   max_length=self.model.config.max_tokens)
        batch = encode(self.model, [{"question": question, "quantities": [], "steps": []}])
        relevance = torch.sigmoid(self.model(batch)["c1"][0]).tolist()  # [token]
        out = []
        for a, b in parse(question).spans:
            inside = [r for r, (s, e) in zip(relevance, enc["offset_mapping"]) if e > s and s < b and e > a]
            if inside and sum(inside) / len(inside) > 0.5:
                out.append((a, b))
        return out

    @torch.no_grad()
    def solve(self, question: str) -> Solution:
        check_question(question)
        quantities = find_quantities(question)
        spans = self.spans(question)
        if not spans or not quantities:
            return Solution(question, None, None, spans, reason="no operation-bearing span or no quantity found")
        cands = groupings(spans)
        qjson = [q.to_json() for q in quantities]
        rows = [{"question": question, "quantities": qjson,
                 "steps": [{"op": "add", "region": list(r), "operands": [], "depends_on": []} for r in g]} for g in cands]
        batch = encode(self.model, rows)
        out = self.model(batch)  # one pass for every step of every candidate
        consts = [sympy.Rational(c) for c in self.model.config.constants]
        Q, S = batch["mention_mask"].shape[1], batch["step_mask"].shape[1]
        scored = []
        for b, g in enumerate(cands):
            n = len(g)
            op_lp = torch.log_softmax(out["c2"][b, :n], -1)  # [step, op]
            c3_lp = torch.log_softmax(out["c3"][b, :n], -1)  # [step, slot, cand]
            steps, score = [], 0.0
            for s in range(n):
                k = int(op_lp[s].argmax())
                score += float(op_lp[s, k])
                operands, picks = [], []
                for slot in range(2):
                    order = torch.argsort(c3_lp[s, slot], descending=True).tolist()
                    taken = {o_pick for o_pick in picks}
                    pick = next(c for c in order if (c < Q + s or Q + S <= c < Q + S + len(consts)) and c not in taken)
                    picks.append(pick)
                    score += float(c3_lp[s, slot, pick])
                    if pick < Q:
                        operands.append(Operand(Source.QUANTITY, quantities[pick].value, pick))
                    elif pick < Q + S:
                        operands.append(Operand(Source.RESULT, sympy.Integer(0), pick - Q))
                    else:
                        operands.append(Operand(Source.CONSTANT, consts[pick - Q - S]))
                op = OPS[k] if self.model.config.c2_labels == "ops" else "add"
                steps.append(Step(Op(op), operands, span=g[s]))
            goal = int(out["c6_goal"][b, :n].argmax())
            graph = Graph(question, quantities, steps, goal)
            run = execute(graph)
            scored.append({"graph": graph, "answer": run.answer, "ok": run.ok and run.answer is not None, "score": score})
        scored.sort(key=lambda c: (c["ok"], c["score"]), reverse=True)
        best = scored[0]
        diag = [{"answer": c["answer"], "score": c["score"], "ok": c["ok"]} for c in scored]
        if not best["ok"]:
            return Solution(question, None, best["graph"], spans, best["score"], diag, "no candidate executes")
        return Solution(question, best["answer"], best["graph"], spans, best["score"], diag)
