"""The scorer: a learned ranking of one question's candidate graphs (a verifier over the executed candidates).

    $ mycelium scorer --model runs/main/models/minilm
    fitted on 6973 GSM8K fit problems (gold among the candidates for 2631)
    GSM8K dev (500, held out): 4.4% (log-probability ranking) → 17.0% (scorer)
    wrote runs/main/models/minilm/scorer.json

Summed log probabilities favour short graphs: every step costs its operand
and operation log probabilities, so a one-step graph outranks the right
four-step one. The scorer weighs what the solver already knows about each
candidate (a feature vector, `FEATURES`: its log probabilities, what it
reads, its answer, and the values its steps computed on the way) with a
small MLP fitted to put the candidates that reach the gold answer first: a
softmax over the candidates of each problem (listwise), on problems the
executor can check. The solver answers with the answer whose candidates hold
the most of that softmax mass (`by_answer`). It never sees gold at solve
time; gold only labels its training candidates.

It is fitted on GSM8K fit problems (the specialists' training split: their
candidates look a little better than unseen ones, 41% vs 35% with gold among
them, yet a scorer fitted there ranks dev better than one fitted on dev
itself, which has too few problems), its accuracy is reported on GSM8K dev,
and the weights are a small JSON file beside the model (no pickles).
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .graph import Op, Source

FEATURES = [
    "plan log prob", "steps log prob", "steps log prob per step", "steps", "answer step log prob", "wiring log prob",
    "answer type as C6 predicts", "share of question quantities used", "question quantities unused",
    "constants used", "implicit steps", "results never used", "answer is an integer", "answer is negative",
    "log10 |answer|", "answer is a question quantity", "candidates with this answer (log)",
    "best score of this answer minus best score",
    # The executed values along the way: a wrong grouping or operand often shows in a step that no word
    # problem's solution would compute (a negative count, a fraction of a person, a step repeating a value).
    "steps with a fractional value", "steps with a negative value", "log10 largest |step value|", "steps with value zero",
    "log10 |answer| minus log10 largest question quantity", "earlier steps whose value is a question quantity",
    "question quantities read more than once", "distinct operations", "answer step is not the last",
    "steps repeating an earlier value", "answer below every question quantity", "subtractions", "divisions",
    "log10 denominator of the answer",
]


def _log10(x) -> float:
    return math.log10(abs(float(x)) + 1)


def _values(g, values: list, seen: dict, given: set, magnitudes: list[float]) -> list[float]:
    """A candidate's features from its executed step values (`FEATURES` from "steps with a fractional value").
    `seen` keeps what each value says, read once per question: its candidates share most of their values,
    and sympy's comparisons are slow. `given`: the question's quantity values; `magnitudes`: their sizes."""
    info = []
    for v in values:
        if v not in seen:
            f = float(v)
            seen[v] = (not v.is_integer, f < 0, f == 0, _log10(f), v in given)
        info.append(seen[v])
    fractional, negative, zero, size, is_given = zip(*info)
    ops = [s.op for s in g.steps]
    read = [o.ref for s in g.steps for o in s.operands if o.source is Source.QUANTITY]
    answer = values[-1] if g.answer is None else values[g.answer]
    a = abs(float(answer))
    return [sum(fractional), sum(negative), max(size), sum(zero), _log10(a) - _log10(max(magnitudes, default=0)),
            sum(is_given[:-1]), len(read) - len(set(read)), len(set(ops)),
            float(g.answer is not None and g.answer != len(values) - 1), len(values) - len(set(values)),
            float(bool(magnitudes) and a < min(magnitudes)), ops.count(Op.SUB), ops.count(Op.DIV),
            math.log10(answer.q) if answer.is_Rational else 0.0]


def features(candidates: list[dict], n_quantities: int) -> np.ndarray:
    """[candidate, feature] for one question's executed candidates (dicts with graph, answer, step values,
    parts, plausible)."""
    votes, best_of = defaultdict(int), defaultdict(lambda: -math.inf)
    raw = [c["parts"]["plan"] + c["parts"]["steps"] + c["parts"]["goal"] for c in candidates]
    for c, r in zip(candidates, raw):
        votes[c["answer"]] += 1  # sympy numbers hash by value
        best_of[c["answer"]] = max(best_of[c["answer"]], r)
    top = max(raw, default=0.0)
    by_value: dict = {}  # candidates share a few answers: read each once
    seen: dict = {}  # the same for step values
    quantities = candidates[0]["graph"].quantities if candidates else []
    given, magnitudes = {q.value for q in quantities}, [abs(float(q.value)) for q in quantities]
    rows = []
    for c in candidates:
        g, p, x = c["graph"], c["parts"], c["answer"]
        used = {o.ref for s in g.steps for o in s.operands if o.source is Source.QUANTITY}
        feeds = {o.ref for s in g.steps for o in s.operands if o.source is Source.RESULT}
        dangling = sum(1 for k in range(len(g.steps)) if k not in feeds and k != g.answer)
        if x not in by_value:
            value = float(x) if x is not None else 0.0
            by_value[x] = [float(bool(x is not None and x.is_integer)), float(value < 0), math.log10(abs(value) + 1),
                           float(x is not None and any(q.value == x for q in g.quantities)), math.log(votes[x]),
                           best_of[x] - top]
        rows.append([
            p["plan"], p["steps"], p["steps"] / p["n"], p["n"], p["goal"], p["wiring"], float(c["plausible"]),
            len(used) / max(n_quantities, 1), n_quantities - len(used),
            sum(o.source is Source.CONSTANT for s in g.steps for o in s.operands),
            sum(s.span is None for s in g.steps), dangling, *by_value[x], *_values(g, c["values"], seen, given, magnitudes),
        ])
    return np.asarray(rows, dtype=np.float64).reshape(len(candidates), len(FEATURES))


@dataclass
class Scorer:
    """A small MLP from a candidate's standardised features to its score: [feature] → [hidden] → GELU → 1."""
    mean: list[float]
    std: list[float]
    hidden_weight: list[list[float]]  # [hidden, feature]
    hidden_bias: list[float]  # [hidden]
    out_weight: list[float]  # [hidden]
    features: list[str]
    fitted_on: dict = field(default_factory=dict)  # `provenance`: the model and the settings its candidates came from
    dev_accuracy: float | None = None  # GSM8K dev with this scorer, as `mycelium scorer` reported it (held out or cross-validated)

    @functools.cached_property
    def _arrays(self) -> tuple:
        """The JSON lists as arrays, made once: the solver scores every question with them."""
        return (np.asarray(self.mean), np.asarray(self.std), torch.tensor(self.hidden_weight).T,
                torch.tensor(self.hidden_bias), torch.tensor(self.out_weight))

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """[candidate] scores; higher ranks first."""
        mean, std, w1, b1, w2 = self._arrays
        x = torch.from_numpy((feats - mean) / std).float()  # [candidate, feature]
        return (torch.nn.functional.gelu(x @ w1 + b1) @ w2).numpy()  # [candidate]

    def save(self, path: Path) -> None:
        from .store import atomic_write

        atomic_write(path, json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, path: Path) -> "Scorer | None":
        if not path.exists():
            return None
        try:
            s = cls(**json.loads(path.read_text()))
        except TypeError:  # written by another version of this class
            return None
        return s if s.features == FEATURES else None  # other features: fall back to log probs


def fit(groups: list[tuple[np.ndarray, np.ndarray, list]], hidden: int = 16, weight_decay: float = 0.1, steps: int = 300,
        seed: int = 0, seeds: int = 1) -> Scorer:
    """Listwise fit: per problem, the softmax over its candidates puts its mass on those with gold (labels 1).

    Full-batch AdamW; the defaults were chosen on GSM8K dev with the scorer fitted on 2,500 fit problems
    (hidden 16, 200–400 steps: 13.4–14.8% over seeds; a linear scorer 12.2%).

    `seeds` > 1 fits that many MLPs (seeds `seed`, `seed`+1, ...) and averages their scores: one MLP with
    their hidden units side by side and the output weights divided among them, so the JSON stays one MLP.
    A single fit moves by a point or two with its seed; GSM8K dev 500, bfloat16 encoder, fitted on 3,000
    fit problems: seeds 0–4 13.4–16.0% (mean 14.8%), their ensemble 15.6%; on all 6,973: 14.8–15.4%
    (mean 15.2%), ensemble 15.6%.
    """
    if seeds > 1:
        parts = [fit(groups, hidden, weight_decay, steps, seed + k) for k in range(seeds)]
        one = parts[0]
        return Scorer(one.mean, one.std, [w for p in parts for w in p.hidden_weight],
                      [b for p in parts for b in p.hidden_bias], [w / seeds for p in parts for w in p.out_weight],
                      FEATURES)
    useful = [(f, y) for f, y, _ in groups if y.any() and not y.all()]
    allf = np.concatenate([f for f, _, _ in groups if len(f)] or [np.zeros((1, len(FEATURES)))])
    mean, std = allf.mean(0), allf.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, 1, bias=False))  # a shared offset does not change a ranking
    if useful:
        n = max(len(f) for f, _ in useful)
        X = torch.zeros(len(useful), n, len(FEATURES))  # [problem, candidate, feature]
        pos = torch.zeros(len(useful), n, dtype=torch.bool)
        real = torch.zeros(len(useful), n, dtype=torch.bool)
        for i, (f, y) in enumerate(useful):
            X[i, :len(f)] = torch.from_numpy((f - mean) / std).float()
            pos[i, :len(f)] = torch.from_numpy(y.astype(bool))
            real[i, :len(f)] = True
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=weight_decay)
        for _ in range(steps):
            s = net(X).squeeze(-1)  # [problem, candidate]
            loss = (torch.logsumexp(s.masked_fill(~real, -1e9), 1) - torch.logsumexp(s.masked_fill(~pos, -1e9), 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        torch.nn.init.zeros_(net[2].weight)  # nothing to learn from: every candidate scores the same
    return Scorer(mean.tolist(), std.tolist(), net[0].weight.tolist(), net[0].bias.tolist(),
                  net[2].weight[0].tolist(), FEATURES)


def provenance(model_dir: Path, **settings) -> dict:
    """What a scorer was fitted on: the model's weights (sha1) and the solver and data settings, to tell a stale one."""
    import hashlib

    digest = hashlib.sha1((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()
    return {"model_sha1": digest, **settings}


def labelled(candidates: list[dict], gold) -> tuple[np.ndarray, np.ndarray, list]:
    """One solved problem as training data, over the candidates that execute: [candidate, feature],
    [candidate] reaches gold, and their answers (to group them as the solver does)."""
    from .answer import answers_match

    ok = [c for c in candidates if c["ok"]]
    return (np.asarray([c["features"] for c in ok], dtype=np.float64).reshape(len(ok), len(FEATURES)),
            np.asarray([answers_match(c["answer"], gold) for c in ok], dtype=bool), [c["answer"] for c in ok])


def by_answer(scores: np.ndarray, answers: list) -> np.ndarray:
    """[candidate] order: the answer with the most softmax mass first (its candidates best-first), then the next.

    The fit puts softmax mass on the gold answer summed over all the candidates that reach it, so the
    decision that matches it picks the answer with the most mass (log-sum-exp of its candidates' scores),
    not the single best candidate: GSM8K dev 500, three scorer seeds, 15.0–15.8% → 16.2–16.6%.
    """
    mass: dict = defaultdict(lambda: -math.inf)
    for a, s in zip(answers, scores):
        mass[a] = np.logaddexp(mass[a], s)
    return np.asarray(sorted(range(len(scores)), key=lambda k: (-mass[answers[k]], -scores[k])), dtype=int)


def top1(groups: list[tuple[np.ndarray, np.ndarray, list]], scorer: Scorer) -> float:
    """Share of problems whose chosen answer (`by_answer`) is gold; problems with no candidate count as wrong."""
    return sum(bool(y[by_answer(scorer(f), a)[0]]) for f, y, a in groups if len(f)) / max(len(groups), 1)


def cross_validate(groups: list[tuple[np.ndarray, np.ndarray, list]], folds: int = 5, extra: list = (),
                   **fit_args) -> float:
    """Accuracy of a scorer fitted on the other folds (and `extra`, other problems it always trains on), over
    every fold: what the scorer adds, held out."""
    hits = 0.0
    for k in range(folds):
        train = [g for i, g in enumerate(groups) if i % folds != k] + list(extra)
        held = [g for i, g in enumerate(groups) if i % folds == k]
        hits += top1(held, fit(train, **fit_args)) * len(held)
    return hits / max(len(groups), 1)
