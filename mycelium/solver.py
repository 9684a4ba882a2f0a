"""The solver: question text in, answer + operation graph + source spans out. No chain-of-thought.

    >>> solver = Solver.load("runs/main/models/minilm")
    >>> s = solver.solve("Tom has 3 boxes with 4 apples each. How many apples does he have?")
    >>> s.answer, [st.op.value for st in s.graph.steps]
    (12, ['mul'])
    >>> solver.solve_batch(questions)      # many at once: one encoder pass per batch of questions

1. The encoder reads each question once; C1 scores its tokens, and the
   spaCy clauses (the same clauses the training regions were expanded to)
   whose mean relevance is over the threshold are the spans.
2. Candidate groupings of spans into steps are enumerated (search, not
   learning: the space is small): each span a step, each adjacent pair
   merged, each span used twice, each span dropped, each span moved last.
3. The heads C2–C6 run for every step of every candidate of every question
   in the batch in one pass over the shared encoder states.
4. Each grouping is decoded with a beam: per step the best operations and
   operand tuples (C3 points at mentions, earlier steps, constants, or "no
   more operands"), C6 picks the answer step, and C5 scores the wiring (does
   step t feed step s). Every decoded graph is executed; candidates rank by
   validity (executes; answer of the type C6 predicts), then by summed log
   probability. The best comes back with its
   graph and spans.

The solver sees the question text only; refusals (not English, no
quantity, too long, numbers too large, over the time budget) come back as a
Solution with no answer and a reason, never as an exception.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy
import torch

from .clauses import parse_many
from .config import ExecutorConfig
from .data import check_question
from .errors import BadInput
from .executor import execute
from .graph import Graph, Op, Operand, Source, Step
from .numbers import find_quantities
from .specialists import ANSWER_TYPES, MAX_SLOTS, MAX_STEPS, OPS, _char_mask
from .training import load_model


@dataclass
class SolverConfig:
    threshold: float = 0.5  # C1: a clause is a span when its tokens' mean relevance is over this
    groupings: int = 24  # candidate groupings per problem
    beam: int = 4  # alternatives kept per step decision and partial graphs kept per grouping
    batch_size: int = 32  # questions per encoder pass
    time_budget_s: float = 5.0  # per problem, after the shared encoder pass
    min_english: float = 0.5  # langdetect's probability of English under which a question is refused
    wiring_weight: float = 1.0  # how much C5's agreement with the graph's wiring counts in the score


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


def groupings(spans: list[tuple[int, int]], limit: int = 24) -> list[list[tuple[int, int]]]:
    """Candidate step regions: the spans, adjacent pairs merged, each span twice, each dropped, each moved last.

    Steps run in solution order, which is not always text order: a final
    "altogether" step often reads the first clause. Moving one span to the
    end covers that case without enumerating permutations.
    """
    if len(spans) > MAX_STEPS - 1:  # keep the longest, in text order
        spans = sorted(sorted(spans, key=lambda s: s[0] - s[1])[: MAX_STEPS - 1])
    out = [list(spans)]
    for i in range(len(spans) - 1):
        out.append(spans[:i] + [(spans[i][0], spans[i + 1][1])] + spans[i + 2:])
    for i in range(len(spans)):
        out.append(spans[:i + 1] + [spans[i]] + spans[i + 1:])
    for i in range(len(spans)):
        if len(spans) > 1:
            out.append(spans[:i] + spans[i + 1:])
    for i in range(len(spans) - 1):
        out.append(spans[:i] + spans[i + 1:] + [spans[i]])
    seen, unique = set(), []
    for g in out:
        key = tuple(g)
        if g and key not in seen and len(g) <= MAX_STEPS:
            seen.add(key)
            unique.append(g)
    return unique[:limit]


def value_type(x: sympy.Expr) -> str:
    """The answer type C6 predicts, read off a value: integer, decimal (terminates), or fraction."""
    if x.is_integer:
        return "integer"
    if x.is_rational:
        q = int(sympy.denom(x))
        while q % 2 == 0:
            q //= 2
        while q % 5 == 0:
            q //= 5
        return "decimal" if q == 1 else "fraction"
    return "other"


def _top(lp: np.ndarray, allowed: list[int], k: int) -> list[int]:
    return sorted(allowed, key=lambda c: -lp[c])[:k]


def decode(op_lp: np.ndarray, c3_lp: np.ndarray, Q: int, S: int, n_const: int, beam: int,
           n_mentions: int | None = None) -> list[tuple[float, list]]:
    """Beam search over one grouping's steps: [(log prob, [(op index, [candidate index, ...]) per step])].

    op_lp: [step, op]; c3_lp: [step, slot, cand] with candidates laid out as
    [Q mentions | S steps | constants | another constant | no more]. "Another
    constant" has no value and is never picked; "no more" may end a step
    after two operands. Only the first `n_mentions` mentions are this
    question's own (the rest pad the batch).
    """
    end = c3_lp.shape[-1] - 1
    partial: list[tuple[float, list]] = [(0.0, [])]
    for s in range(op_lp.shape[0]):
        allowed = list(range(Q if n_mentions is None else n_mentions)) + [Q + t for t in range(s)] + [Q + S + k for k in range(n_const)]
        tuples, finished = [(0.0, [])], []
        for slot in range(MAX_SLOTS):
            lp = c3_lp[s, slot]
            grown = []
            for score, picks in tuples:
                if slot >= 2:
                    finished.append((score + lp[end], picks))
                grown += [(score + lp[c], picks + [c]) for c in _top(lp, [c for c in allowed if c not in picks], beam)]
            tuples = sorted(grown, key=lambda t: -t[0])[:beam]
        finished = sorted(finished + tuples, key=lambda t: -t[0])[:beam]
        ops = np.argsort(-op_lp[s])[: min(beam, 2)]
        partial = sorted(((p + float(op_lp[s, o]) + t, steps + [(int(o), picks)])
                          for p, steps in partial for o in ops for t, picks in finished), key=lambda x: -x[0])[:beam]
    return partial


@functools.lru_cache(maxsize=1)
def _langdetect():
    from langdetect import DetectorFactory, detect_langs

    DetectorFactory.seed = 0  # langdetect samples; seeded, its answers repeat
    return detect_langs


class Solver:
    def __init__(self, model, config: SolverConfig | None = None):
        self.model = model.eval()
        self.config = config or SolverConfig()
        self.limits = ExecutorConfig()
        self.constants = [sympy.Rational(c) for c in model.config.constants]

    @classmethod
    def load(cls, folder: str | Path, config: SolverConfig | None = None) -> "Solver":
        return cls(load_model(Path(folder)), config)

    def solve(self, question: str) -> Solution:
        """One question; BadInput for input that is not a question at all (empty, not text)."""
        check_question(question)
        return self.solve_batch([question])[0]

    def refusal(self, question) -> str | None:
        """Why this question gets no answer before the model reads it, or None."""
        try:
            check_question(question)
        except BadInput as e:
            return str(e)
        try:
            best = _langdetect()(question)[0]
            if best.lang != "en" and best.prob >= self.config.min_english:
                return f"the question does not look like English (langdetect: {best.lang} {best.prob:.2f})"
        except Exception:  # langdetect raises on text with no letters
            return "the question has no words"
        n = len(self.model.tokenizer(question)["input_ids"])
        if n > self.model.config.max_tokens:
            return (f"the question is {n} tokens, over the model's {self.model.config.max_tokens}; "
                    "not truncated, since the question sentence usually comes last")
        return None

    @torch.no_grad()
    def solve_batch(self, questions: list[str]) -> list[Solution]:
        # Similar lengths share a batch: padding is the encoder's largest waste.
        order = sorted(range(len(questions)), key=lambda i: len(questions[i]) if isinstance(questions[i], str) else 0)
        out: list[Solution | None] = [None] * len(questions)
        for k in range(0, len(order), self.config.batch_size):
            chunk = order[k:k + self.config.batch_size]
            for i, sol in zip(chunk, self._solve_batch([questions[i] for i in chunk])):
                out[i] = sol
        return out

    def _solve_batch(self, questions: list[str]) -> list[Solution]:
        sols: list[Solution | None] = [None] * len(questions)
        todo, quantities = [], {}
        for i, q in enumerate(questions):
            reason = self.refusal(q)
            if reason is None:
                quantities[i] = find_quantities(q)
                big = [x.text for x in quantities[i] if len(str(abs(sympy.numer(x.value)))) > self.limits.max_digits]
                if big:
                    reason = f"a number is too large to handle exactly ({big[0][:20]}…, over {self.limits.max_digits} digits)"
                elif not quantities[i]:
                    reason = "no quantity in the question: nothing to compute"
            if reason:
                sols[i] = Solution(str(q), None, None, [], reason=reason)
            else:
                todo.append(i)
        if not todo:
            return sols
        texts = [questions[i] for i in todo]
        tok = self.model.tokenizer(texts, return_offsets_mapping=True, padding=True, truncation=True,
                                   max_length=self.model.config.max_tokens, return_tensors="pt")
        hidden = self.model.read(tok["input_ids"], tok["attention_mask"])  # [question, token, d]
        relevance = torch.sigmoid(self.model.c1(hidden).squeeze(-1))  # [question, token]
        rows, owner, spans = [], [], {}
        for j, (i, clauses) in enumerate(zip(todo, parse_many(texts))):
            spans[i] = self._spans(clauses.spans, relevance[j], tok["offset_mapping"][j], tok["attention_mask"][j])
            for g in groupings(spans[i], self.config.groupings):
                rows.append({"groups": g, "quantities": quantities[i]})
                owner.append(j)
        batch = self._candidate_masks(rows, owner, tok["offset_mapping"])
        batch["attention_mask"] = tok["attention_mask"][owner]
        heads = self.model.heads(hidden[owner], batch)  # one pass: every step of every candidate
        op_lp = torch.log_softmax(heads["c2"], -1).numpy()  # [cand, step, op]
        c3_lp = torch.log_softmax(heads["c3"], -1).numpy()  # [cand, step, slot, cand]
        goal_logits = heads["c6_goal"].numpy()  # [cand, step]
        edge_lp = torch.nn.functional.logsigmoid(heads["c5"]).numpy()  # [cand, earlier, later]: log p(edge)
        no_edge_lp = torch.nn.functional.logsigmoid(-heads["c5"]).numpy()
        types = heads["c6_type"].argmax(-1).tolist()  # [cand]
        Q, S = batch["mention_mask"].shape[1], batch["step_mask"].shape[1]
        by_question: dict[int, list[int]] = {}
        for r, j in enumerate(owner):
            by_question.setdefault(j, []).append(r)
        for j, i in enumerate(todo):
            t0 = time.monotonic()
            scored, runs = [], {}
            for r in by_question[j]:
                if time.monotonic() - t0 > self.config.time_budget_s:
                    break
                n = len(rows[r]["groups"])
                goal_lp = goal_logits[r, :n] - np.logaddexp.reduce(goal_logits[r, :n])
                goal = int(goal_lp.argmax())
                for score, steps in decode(op_lp[r, :n], c3_lp[r, :n], Q, S, len(self.constants), self.config.beam,
                                           len(quantities[i])):
                    graph = self._graph(questions[i], quantities[i], rows[r]["groups"], steps, goal, Q, S)
                    key = (tuple((k, tuple(self._pick_key(c, Q, S, quantities[i]) for c in picks)) for k, picks in steps), goal)
                    if key not in runs:  # groupings often decode to the same graph: execute it once
                        runs[key] = execute(graph, self.limits)
                    run = runs[key]
                    ok = run.ok and run.answer is not None
                    plausible = ok and value_type(run.answer) == ANSWER_TYPES[types[r]]
                    wiring = self._wiring(steps, edge_lp[r], no_edge_lp[r], Q, S)
                    scored.append({"graph": graph, "answer": run.answer, "ok": ok, "plausible": plausible,
                                   "score": float(score + goal_lp[goal] + self.config.wiring_weight * wiring),
                                   "error": None if run.ok else str(run.error)})
            scored.sort(key=lambda c: (c["ok"], c["plausible"], c["score"]), reverse=True)
            diag = [{k: c[k] for k in ("answer", "score", "ok", "plausible")} for c in scored]
            if not scored:
                sols[i] = Solution(questions[i], None, None, spans[i], reason="over the time budget before any candidate")
                continue
            best = scored[0]
            reason = None if best["ok"] else f"no candidate executes ({best['error']})"
            sols[i] = Solution(questions[i], best["answer"] if best["ok"] else None, best["graph"], spans[i],
                               float(best["score"]), diag, reason)
        return sols

    def _spans(self, clauses, relevance, offsets, mask) -> list[tuple[int, int]]:
        """Clauses whose tokens' mean C1 relevance is over the threshold; the best clause if none is."""
        means = []
        for a, b in clauses:
            inside = _char_mask(offsets, [(a, b)]) * mask  # [token]
            means.append(float((inside * relevance).sum() / inside.sum()) if inside.sum() else 0.0)
        chosen = [c for c, m in zip(clauses, means) if m > self.config.threshold]
        return chosen or ([clauses[int(np.argmax(means))]] if clauses else [])

    def _candidate_masks(self, rows: list[dict], owner: list[int], offsets) -> dict:
        """`encode`'s step, mention and pointer masks for every candidate, each span's mask made once."""
        R, T = len(rows), offsets.shape[1]
        S = max(1, min(MAX_STEPS, max(len(r["groups"]) for r in rows)))
        Q = max(1, max(len(r["quantities"]) for r in rows))
        C = len(self.constants)
        cache: dict = {}

        def mask(j, span):
            if (j, span) not in cache:
                cache[j, span] = _char_mask(offsets[j], [span])  # [token]
            return cache[j, span]

        step_mask, mention_mask = torch.zeros(R, S, T), torch.zeros(R, Q, T)
        cand_mask = torch.zeros(R, S, Q + S + C + 2, dtype=torch.bool)  # [cand, step, pointer target]
        for r, (row, j) in enumerate(zip(rows, owner)):
            for q, x in enumerate(row["quantities"]):
                mention_mask[r, q] = mask(j, (x.start, x.end))
            for k, span in enumerate(row["groups"][:S]):
                step_mask[r, k] = mask(j, tuple(span))
            cand_mask[r, :, : len(row["quantities"])] = True
        cand_mask[:, :, Q + S:] = True
        cand_mask[:, :, Q: Q + S] = torch.tril(torch.ones(S, S, dtype=torch.bool), -1)  # earlier steps only
        return {"step_mask": step_mask, "mention_mask": mention_mask, "cand_mask": cand_mask,
                "n_steps": torch.tensor([min(len(r["groups"]), S) for r in rows])}

    def _pick_key(self, c: int, Q: int, S: int, quantities) -> tuple:
        if c < Q:
            return ("q", str(quantities[c].value))
        return ("s", c - Q) if c < Q + S else ("c", c - Q - S)

    @staticmethod
    def _wiring(steps, edge_lp, no_edge_lp, Q, S) -> float:
        """C5's log probability of the graph's edges (step t feeds step s) and non-edges."""
        total = 0.0
        for s, (_, picks) in enumerate(steps):
            feeds = {c - Q for c in picks if Q <= c < Q + S}
            total += sum(edge_lp[t, s] if t in feeds else no_edge_lp[t, s] for t in range(s))
        return float(total)

    def _graph(self, question, quantities, groups, steps, goal, Q, S) -> Graph:
        out = []
        for s, (k, picks) in enumerate(steps):
            operands = []
            for c in picks:
                if c < Q:
                    operands.append(Operand(Source.QUANTITY, quantities[c].value, c))
                elif c < Q + S:
                    operands.append(Operand(Source.RESULT, sympy.Integer(0), c - Q))
                else:
                    operands.append(Operand(Source.CONSTANT, self.constants[c - Q - S]))
            op = OPS[k] if self.model.config.c2_labels == "ops" else "add"
            out.append(Step(Op(op), operands, span=tuple(groups[s])))
        return Graph(question, quantities, out, goal)
