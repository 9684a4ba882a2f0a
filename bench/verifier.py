"""Would a cross-encoder verifier rank the solver's candidates better than the scorer? A screen on GSM8K dev.

    $ python bench/verifier.py --model runs/s40/models/minilm --init student
    (figures: docs/experiments.md, stop 41)

The scorer ranks a question's candidate graphs by scalar features (log probabilities, what the graph reads,
its executed values). A verifier in the manner of Cobbe et al. (2021) reads instead the question and one
candidate's arithmetic as a sentence pair ("Joy can read 8 pages …" / "60 / 20 = 3 ; 120 / 3 = 40 ; 40 / 8 = 5")
through MiniLM-L6, mean-pooled into one score, trained listwise (a softmax over up to `--per-problem` of a
problem's distinct candidates, mass on those that reach gold) on the candidates of GSM8K fit and ASDiv fit
problems whose candidates hold both right and wrong answers. Hard negatives first: half of each list is the
scorer's best wrong candidates, the rest sampled. `--init student` starts from the model's own fine-tuned
encoder. (Stop 22 screened a narrower one by hand: a fresh MiniLM over the best graph of each of the scorer's
top 4 answers, GSM8K fit only.)

The ranking it reports sums answer mass as the solver does (`scorer.by_answer`) over scorer + w × verifier;
w = 0 is the shipped solver. Every choice is read on GSM8K dev; no test set is touched. It costs one encoder
pass per distinct candidate (about 27 a GSM8K question), so even where it helped it would be an option.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from mycelium.answer import answers_match
from mycelium.backbone import backbone_folder
from mycelium.data import load
from mycelium.executor import execute
from mycelium.graph import arithmetic
from mycelium.scorer import by_answer
from mycelium.solver import Solver, SolverConfig


def as_text(graph) -> str:
    """A candidate as the verifier reads it: one "a op b = value" per step, the values executed."""
    values = execute(graph).values
    return " ; ".join(arithmetic(s, values[k], values) for k, s in enumerate(graph.steps))


def candidates(solver: Solver, dataset: str, split: str, limit: int | None) -> list[dict]:
    """Per problem: its question and its executed candidates (arithmetic, answer, scorer score, reaches gold)."""
    problems = load(dataset, split)[:limit]
    out = []
    for p, sol in zip(problems, solver.solve_each([p.question for p in problems], f"solve {dataset}/{split}")):
        cands = [{"text": as_text(c["graph"]), "answer": c["answer"], "score": c["score"],
                  "gold": bool(answers_match(c["answer"], p.answer))} for c in sol.candidates if c["ok"]]
        out.append({"question": p.question, "cands": cands})
    return out


class Verifier(torch.nn.Module):
    def __init__(self, init: str | None):
        super().__init__()
        folder = backbone_folder()
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.enc = AutoModel.from_pretrained(folder)
        if init:  # the specialists' fine-tuned encoder: it has read these questions before
            from safetensors.torch import load_file

            own = self.enc.state_dict()
            tuned = {k.removeprefix("encoder."): v for k, v in load_file(init).items() if k.startswith("encoder.")}
            self.enc.load_state_dict({k: v for k, v in tuned.items() if k in own and own[k].shape == v.shape}, strict=False)
        self.head = torch.nn.Linear(self.enc.config.hidden_size, 1)

    def forward(self, questions: list[str], texts: list[str]) -> torch.Tensor:
        b = self.tok(questions, texts, truncation="only_first", max_length=256, padding=True, return_tensors="pt")
        h = self.enc(**b).last_hidden_state  # [pair, token, hidden]
        m = b["attention_mask"].unsqueeze(-1).float()  # [pair, token, 1]
        return self.head((h * m).sum(1) / m.sum(1)).squeeze(-1)  # [pair]


def distinct(cands: list[dict]) -> list[dict]:
    """One candidate per arithmetic (groupings often decode to the same), the scorer's best first."""
    best: dict = {}
    for c in cands:
        if c["text"] not in best or c["score"] > best[c["text"]]["score"]:
            best[c["text"]] = c
    return sorted(best.values(), key=lambda c: -c["score"])


def train(model: Verifier, problems: list[dict], epochs: float, per_problem: int, batch: int, seed: int) -> None:
    rng = random.Random(seed)
    lists = [distinct(p["cands"]) for p in problems]
    usable = [(p["question"], cs) for p, cs in zip(problems, lists)
              if any(c["gold"] for c in cs) and not all(c["gold"] for c in cs)]
    steps = max(1, int(epochs * len(usable) / batch))
    print(f"verifier: {len(usable)} training problems with right and wrong candidates, {steps} steps")
    opt = torch.optim.AdamW([{"params": model.enc.parameters(), "lr": 3e-5}, {"params": model.head.parameters(), "lr": 1e-3}],
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 50) * max(0.0, 1 - s / steps))
    model.train()
    order: list[int] = []
    bar = tqdm(range(steps), desc="train verifier", unit="step")
    for _ in bar:
        qs, texts, lists_at = [], [], []
        for _ in range(batch):
            if not order:
                order = rng.sample(range(len(usable)), len(usable))
            q, cs = usable[order.pop()]
            right, wrong = [c for c in cs if c["gold"]], [c for c in cs if not c["gold"]]
            pick = rng.sample(right, min(2, len(right))) + wrong[:per_problem // 2]
            rest = wrong[per_problem // 2:]
            pick += rng.sample(rest, min(per_problem - len(pick), len(rest))) if len(pick) < per_problem else []
            lists_at.append((len(texts), torch.tensor([c["gold"] for c in pick])))
            qs += [q] * len(pick)
            texts += [c["text"] for c in pick]
        s = model(qs, texts)  # [pair]
        loss = sum(torch.logsumexp(s[a:a + len(y)], 0) - torch.logsumexp(s[a:a + len(y)].masked_fill(~y, -1e9), 0)
                   for a, y in lists_at) / len(lists_at)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


@torch.inference_mode()
def verify(model: Verifier, problems: list[dict]) -> None:
    """Adds each candidate's verifier score ("v")."""
    model.eval()
    for p in tqdm(problems, desc="verify dev", unit="problem"):
        texts = sorted({c["text"] for c in p["cands"]})
        scores = {t: v for k in range(0, len(texts), 64)
                  for t, v in zip(texts[k:k + 64], model([p["question"]] * len(texts[k:k + 64]), texts[k:k + 64]).tolist())}
        for c in p["cands"]:
            c["v"] = scores[c["text"]]


def accuracy(problems: list[dict], w: float | None) -> float:
    """Share answered right when candidates rank by scorer + w × verifier (None: the verifier alone)."""
    hits = 0
    for p in problems:
        if p["cands"]:
            s = np.asarray([c["v"] if w is None else c["score"] + w * c["v"] for c in p["cands"]])
            hits += p["cands"][by_answer(s, [c["answer"] for c in p["cands"]])[0]]["gold"]
    return hits / max(len(problems), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/main/models/minilm", help="a trained model folder with its scorer.json")
    ap.add_argument("--init", choices=("backbone", "student"), default="backbone",
                    help="the verifier's encoder: MiniLM-L6 as shipped, or the model's own fine-tuned encoder")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--per-problem", type=int, default=8, help="candidates per problem in a training list")
    ap.add_argument("--batch", type=int, default=4, help="problems per step")
    ap.add_argument("--limit", type=int, default=None, help="first N fit problems of each dataset (default all)")
    ap.add_argument("--dev-limit", type=int, default=None, help="first N GSM8K dev problems (default all 500)")
    ap.add_argument("--weights", default="0.25,0.5,1,2", help="verifier weights w to report beside the scorer")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not (Path(a.model) / "scorer.json").is_file():
        raise SystemExit(f"error: {a.model} has no scorer.json (run `mycelium scorer --model {a.model}` first)")
    torch.manual_seed(a.seed)
    t0 = time.time()
    solver = Solver.load(a.model, SolverConfig(keep_graphs=True))
    fit = candidates(solver, "gsm8k", "fit", a.limit) + candidates(solver, "asdiv", "fit", a.limit)
    dev = candidates(solver, "gsm8k", "dev", a.dev_limit)
    model = Verifier(str(Path(a.model) / "model.safetensors") if a.init == "student" else None)
    train(model, fit, a.epochs, a.per_problem, a.batch, a.seed)
    verify(model, dev)
    rows = [("scorer (shipped)", accuracy(dev, 0.0))]
    rows += [(f"scorer + {w:g} × verifier", accuracy(dev, w)) for w in map(float, a.weights.split(","))]
    rows += [("verifier alone", accuracy(dev, None)),
             ("gold among the candidates", sum(any(c["gold"] for c in p["cands"]) for p in dev) / max(len(dev), 1))]
    print(f"| ranking | GSM8K dev ({len(dev)}) |\n|---|---|")
    for name, acc in rows:
        print(f"| {name} | {acc:.1%} |")
    print(json.dumps({"model": a.model, "init": a.init, "epochs": a.epochs, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
