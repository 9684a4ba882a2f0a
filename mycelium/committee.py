"""A committee: several trained models answer each question, and the answer they give the most scorer mass wins.

    $ mycelium eval --dataset gsm8k,asdiv --split dev --model runs/s36/models/minilm,runs/s37/drop10
    dataset                n   acc %  oracle@k % ...
    gsm8k/dev            500    21.2        45.2 ...
    asdiv/dev            500    53.2        77.2 ...

    >>> with Committee.load(["runs/a/models/minilm", "runs/b/models/minilm"]) as committee:
    ...     s = committee.solve("Tom has 3 boxes with 4 apples each. How many apples does he have?")
    >>> s.answer, sorted({c["model"] for c in s.candidates})   # every candidate says which member made it
    (12, [0, 1])

Each member solves the question alone and ranks its own candidates with its
own scorer (`scorer.py`). A member's softmax over the scores of its candidates
that execute is a distribution over answers; the committee averages those
distributions and answers with the answer of most mass, as one solver does
with its own candidates (`scorer.by_answer`). Its graph is that answer's best
candidate's, from the member that gave the answer the most mass, with the
regions its steps read. Scores are not compared across members: each member's
are normalised first, so a member whose scorer is more confident does not win
by its scale alone.

Why: two models trained on the same labels (stop 36's, and one with token
dropout) answer GSM8K dev 20.8% and 19.4% alone and 21.2% as a committee,
ASDiv dev 52.0% and 51.8% alone and 53.2% together (docs/experiments.md, stop
37), while averaging their weights into one model lost 1.3 points. It costs
every member's solve: GSM8K test on 2 cores, 34.1 problems/s with one model,
18.4 with the two (`mycelium eval`, float32 encoder).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import BadInput
from .scorer import by_answer
from .solver import Solution, Solver, SolverConfig


def pool(solutions: list[Solution]) -> Solution:
    """One question's answers from every member, pooled into the committee's Solution.

    Every candidate that executes carries its member (`model`) and, as its score, its share of the pooled
    mass in log space (log of its member's softmax probability over the number of members), so summing a
    answer's candidates (log-sum-exp, as `evaluate.top_answers` does) gives that answer's pooled share.
    """
    n = len(solutions)
    candidates = []
    for k, s in enumerate(solutions):
        ok = [c for c in s.candidates if c["ok"] and c["answer"] is not None and math.isfinite(c["score"])]
        if not ok:
            continue
        scores = np.asarray([c["score"] for c in ok])  # [candidate]
        share = scores - np.logaddexp.reduce(scores) - math.log(n)  # [candidate] log (probability / members)
        candidates += [{**c, "score": v, "model": k} for c, v in zip(ok, share.tolist())]
    if not candidates:  # every member refused or no candidate executes: the first member's reason
        return solutions[0]
    # sympy numbers hash by value, so one answer from several members is one answer here
    order = by_answer(np.asarray([c["score"] for c in candidates]), [c["answer"] for c in candidates])
    candidates = [candidates[k] for k in order]
    chosen = candidates[0]  # the most-mass answer's best candidate
    mass = sum(math.exp(c["score"]) for c in candidates if c["answer"] == chosen["answer"])
    candidates += [{**c, "model": k} for k, s in enumerate(solutions) for c in s.candidates if not c["ok"]]
    graph = chosen.get("graph")
    spans = sorted({st.span for st in graph.steps if st.span}) if graph else solutions[chosen["model"]].spans
    return Solution(solutions[0].question, chosen["answer"], graph, spans, math.log(mass), candidates, None)


class Committee:
    """Several solvers behind one solver's interface (`solve`, `solve_batch`, `solve_each`, `settings`)."""

    def __init__(self, solvers: list[Solver]):
        if len(solvers) < 2:
            raise BadInput(f"a committee needs at least two models (got {len(solvers)})")
        self.solvers = solvers

    @classmethod
    def load(cls, folders: list[str | Path], config: SolverConfig | None = None) -> "Committee":
        # Every candidate keeps its graph: the pooled answer may be no member's own first choice.
        config = replace(config or SolverConfig(), keep_graphs=True)
        return cls([Solver.load(f, config) for f in folders])

    def settings(self) -> dict:
        return {**self.solvers[0].settings(), "committee": len(self.solvers)}

    def solve(self, question: str) -> Solution:
        return pool([s.solve(question) for s in self.solvers])

    def solve_batch(self, questions: list[str]) -> list[Solution]:
        return [pool(list(each)) for each in zip(*(s.solve_batch(questions) for s in self.solvers))]

    def solve_each(self, questions: list[str], desc: str = "solve", progress: bool = True) -> Iterator[Solution]:
        """Answers in order as they come; the members' own streams advance together, so the first member's
        progress bar is the committee's."""
        streams = [s.solve_each(questions, f"{desc} [{len(self.solvers)} models]", progress and k == 0)
                   for k, s in enumerate(self.solvers)]
        for each in zip(*streams):
            yield pool(list(each))

    def close(self) -> None:
        for s in self.solvers:
            s.close()

    def __enter__(self) -> "Committee":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
