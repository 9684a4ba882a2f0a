"""The scorer: a learned ranking of one question's candidate graphs (a verifier over the executed candidates).

    $ mycelium scorer --model runs/main/models/minilm
    solving 500 GSM8K dev problems … gold among the candidates for 131
    5-fold cross-validated accuracy on dev: 4.8% (log-probability ranking) → 9.6% (scorer)
    wrote runs/main/models/minilm/scorer.json

Summed log probabilities favour short graphs: every step costs its operand
and operation log probabilities, so a one-step graph outranks the right
four-step one. The scorer weighs what the solver already knows about each
candidate (a feature vector, `FEATURES`) with weights fitted to put the
candidates that reach the gold answer first: a softmax over the candidates
of each problem (listwise), on problems the executor can check. It never
sees gold at solve time; gold only labels its training candidates.

It is fitted on the GSM8K dev split (the split for tuning), the accuracy it
reports is cross-validated over dev folds, and the weights are a small JSON
file beside the model (no pickles).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .graph import Source

FEATURES = [
    "plan log prob", "steps log prob", "steps log prob per step", "steps", "answer step log prob", "wiring log prob",
    "answer type as C6 predicts", "share of question quantities used", "question quantities unused",
    "constants used", "implicit steps", "results never used", "answer is an integer", "answer is negative",
    "log10 |answer|", "answer is a question quantity", "candidates with this answer (log)",
    "best score of this answer minus best score",
]


def features(candidates: list[dict], n_quantities: int) -> np.ndarray:
    """[candidate, feature] for one question's executed candidates (dicts with graph, answer, parts, plausible)."""
    votes, best_of = defaultdict(int), defaultdict(lambda: -math.inf)
    raw = [c["parts"]["plan"] + c["parts"]["steps"] + c["parts"]["goal"] for c in candidates]
    for c, r in zip(candidates, raw):
        votes[c["answer"]] += 1  # sympy numbers hash by value
        best_of[c["answer"]] = max(best_of[c["answer"]], r)
    top = max(raw, default=0.0)
    rows = []
    for c in candidates:
        g, p, x = c["graph"], c["parts"], c["answer"]
        used = {o.ref for s in g.steps for o in s.operands if o.source is Source.QUANTITY}
        feeds = {o.ref for s in g.steps for o in s.operands if o.source is Source.RESULT}
        dangling = sum(1 for k in range(len(g.steps)) if k not in feeds and k != g.answer)
        value = float(x) if x is not None else 0.0
        rows.append([
            p["plan"], p["steps"], p["steps"] / p["n"], p["n"], p["goal"], p["wiring"], float(c["plausible"]),
            len(used) / max(n_quantities, 1), n_quantities - len(used),
            sum(o.source is Source.CONSTANT for s in g.steps for o in s.operands),
            sum(s.span is None for s in g.steps), dangling,
            float(bool(x is not None and x.is_integer)), float(value < 0), math.log10(abs(value) + 1),
            float(x is not None and any(q.value == x for q in g.quantities)),
            math.log(votes[x]), best_of[x] - top,
        ])
    return np.asarray(rows, dtype=np.float64).reshape(len(candidates), len(FEATURES))


@dataclass
class Scorer:
    weights: list[float]
    mean: list[float]
    std: list[float]
    features: list[str]

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """[candidate] scores; higher ranks first."""
        return ((feats - np.asarray(self.mean)) / np.asarray(self.std)) @ np.asarray(self.weights)

    def save(self, path: Path) -> None:
        from .store import atomic_write

        atomic_write(path, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> "Scorer | None":
        if not path.exists():
            return None
        s = cls(**json.loads(path.read_text()))
        return s if s.features == FEATURES else None  # written by another version: fall back to log probs


def fit(groups: list[tuple[np.ndarray, np.ndarray]], l2: float = 1e-2, steps: int = 300, seed: int = 0) -> Scorer:
    """Listwise fit: per problem, the softmax over its candidates puts its mass on those with gold (labels 1)."""
    useful = [(f, y) for f, y in groups if y.any() and not y.all()]
    allf = np.concatenate([f for f, _ in groups]) if groups else np.zeros((1, len(FEATURES)))
    mean, std = allf.mean(0), allf.std(0) + 1e-6
    if not useful:
        return Scorer([0.0] * len(FEATURES), mean.tolist(), std.tolist(), FEATURES)
    n = max(len(f) for f, _ in useful)
    X = torch.zeros(len(useful), n, len(FEATURES), dtype=torch.float64)  # [problem, candidate, feature]
    pos = torch.zeros(len(useful), n, dtype=torch.bool)
    real = torch.zeros(len(useful), n, dtype=torch.bool)
    for i, (f, y) in enumerate(useful):
        X[i, :len(f)] = torch.from_numpy((f - mean) / std)
        pos[i, :len(f)] = torch.from_numpy(y.astype(bool))
        real[i, :len(f)] = True
    torch.manual_seed(seed)
    w = torch.zeros(len(FEATURES), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        s = X @ w  # [problem, candidate]
        loss = (torch.logsumexp(s.masked_fill(~real, -1e9), 1) - torch.logsumexp(s.masked_fill(~pos, -1e9), 1)).mean()
        loss = loss + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Scorer(w.detach().tolist(), mean.tolist(), std.tolist(), FEATURES)


def top1(groups: list[tuple[np.ndarray, np.ndarray]], scorer: Scorer) -> float:
    """Share of problems whose best-scored candidate reaches gold (problems with no candidate count as wrong)."""
    return sum(bool(y[int(np.argmax(scorer(f)))]) for f, y in groups if len(f)) / max(len(groups), 1)


def cross_validate(groups: list[tuple[np.ndarray, np.ndarray]], folds: int = 5, l2: float = 1e-2) -> float:
    """Accuracy of a scorer fitted on the other folds, over every fold: what the scorer adds, held out."""
    hits = 0.0
    for k in range(folds):
        train = [g for i, g in enumerate(groups) if i % folds != k]
        held = [g for i, g in enumerate(groups) if i % folds == k]
        hits += top1(held, fit(train, l2)) * len(held)
    return hits / max(len(groups), 1)
