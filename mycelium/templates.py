"""Operation templates by Information Bottleneck clustering, with annealed β.

    >>> fit = anneal(px_y, betas=np.geomspace(0.1, 100, 40))   # p(y|x) per step
    >>> [(round(s["beta"], 2), s["clusters"]) for s in fit.splits]
    [(1.23, 2), (4.5, 3), (17.2, 5)]
    >>> fit.assign(level=3)                                     # template of every step
    array([0, 2, 1, ...])

X is a step, represented by its embedding; Y is the type of its execution
result. Because X is continuous, p(y|x) is smoothed over each step's nearest
neighbours in embedding space (a kernel estimate), so steps that look alike
and yield alike end up together. The iterative IB equations

    p(t|x) ∝ p(t) exp(-β KL[p(y|x) || p(y|t)]),   p(y|t) = Σ_x p(y|x) p(x|t)

are solved at increasing β (deterministic annealing): at each β every
cluster is split in two with a small perturbation, the fixed point is found,
and clusters whose p(y|t) coincide are merged again. A cluster survives only
where β is large enough to pay for the information it keeps, so the β at
which the count grows are the split points of the taxonomy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-12


def smooth_labels(embeddings: np.ndarray, y: np.ndarray, n_classes: int, k: int = 10) -> np.ndarray:
    """p(y|x) from the labels of each item's k nearest neighbours (cosine): [item, class]."""
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), EPS)
    sim = e @ e.T  # [item, item]
    k = min(k, len(e))
    nn = np.argsort(-sim, axis=1)[:, :k]
    onehot = np.eye(n_classes)[y]  # [item, class]
    return onehot[nn].mean(1) * 0.9 + onehot * 0.1  # never a hard zero: KL stays finite


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_i || q_t) for every pair: [i, t]."""
    return (p[:, None] * (np.log(p[:, None] + EPS) - np.log(q[None] + EPS))).sum(-1)


@dataclass
class IBFit:
    betas: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # clusters after each β
    encoders: list[np.ndarray] = field(default_factory=list)  # p(t|x) after each β: [item, cluster]
    splits: list[dict] = field(default_factory=list)  # β where the count grew

    def level(self, clusters: int) -> np.ndarray:
        """p(t|x) at the first β that reached this many clusters (or the closest level)."""
        i = int(np.argmin([abs(c - clusters) + (0.5 if c < clusters else 0) for c in self.counts]))
        return self.encoders[i]

    def assign(self, clusters: int) -> np.ndarray:
        return self.level(clusters).argmax(1)


def _solve(pyx: np.ndarray, qtx: np.ndarray, beta: float, iters: int = 200) -> np.ndarray:
    px = np.full(len(pyx), 1.0 / len(pyx))
    for _ in range(iters):
        pt = px @ qtx  # [cluster]
        pyt = (qtx * px[:, None]).T @ pyx / np.maximum(pt[:, None], EPS)  # [cluster, class]
        logits = np.log(pt + EPS)[None] - beta * _kl(pyx, pyt)
        new = np.exp(logits - logits.max(1, keepdims=True))
        new /= new.sum(1, keepdims=True)
        if np.abs(new - qtx).max() < 1e-6:
            return new
        qtx = new
    return qtx


def _merge(pyx: np.ndarray, qtx: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Merge clusters with (nearly) the same p(y|t); drop empty ones."""
    px = np.full(len(pyx), 1.0 / len(pyx))
    pt = px @ qtx
    keep = pt > 1e-6
    qtx = qtx[:, keep]
    pt = pt[keep]
    pyt = (qtx * px[:, None]).T @ pyx / np.maximum(pt[:, None], EPS)
    groups: list[list[int]] = []
    for t in range(qtx.shape[1]):
        for g in groups:
            if np.abs(pyt[g[0]] - pyt[t]).max() < tol:
                g.append(t)
                break
        else:
            groups.append([t])
    return np.stack([qtx[:, g].sum(1) for g in groups], 1)


def anneal(pyx: np.ndarray, betas, seed: int = 0, max_clusters: int = 32) -> IBFit:
    """IB over increasing β; records where clusters split."""
    rng = np.random.default_rng(seed)
    qtx = np.ones((len(pyx), 1))
    fit = IBFit()
    for beta in betas:
        if qtx.shape[1] < max_clusters:  # offer every cluster a split
            noise = rng.uniform(0.45, 0.55, size=qtx.shape)
            qtx = np.concatenate([qtx * noise, qtx * (1 - noise)], 1)
        qtx = _merge(pyx, _solve(pyx, qtx, float(beta)))
        fit.betas.append(float(beta))
        fit.counts.append(qtx.shape[1])
        fit.encoders.append(qtx.copy())
        if len(fit.counts) == 1 or fit.counts[-1] > fit.counts[-2]:
            fit.splits.append({"beta": float(beta), "clusters": qtx.shape[1]})
    return fit


def purity(assign: np.ndarray, labels: list) -> list[dict]:
    """For every cluster: size, its majority label and that label's share."""
    out = []
    for t in np.unique(assign):
        members = [labels[i] for i in np.nonzero(assign == t)[0]]
        values, counts = np.unique(members, return_counts=True)
        out.append({"template": int(t), "size": len(members), "majority": str(values[counts.argmax()]),
                    "purity": float(counts.max() / len(members))})
    return out


RESULT_TYPES = ["integer < 100", "integer >= 100", "non-integer >= 1", "fraction < 1", "negative"]


def result_type(value) -> int:
    """Y: the type of a step's execution result."""
    v = float(value)
    if v < 0:
        return 4
    if float(value).is_integer():
        return 0 if v < 100 else 1
    return 2 if v >= 1 else 3


def step_embeddings(examples: list[dict], backbone: str = "minilm", batch_size: int = 64) -> tuple[np.ndarray, list]:
    """X: each step as its region's mean-pooled encoder embedding plus its operation and operand sources."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .backbone import backbone_folder
    from .specialists import OPS

    name = str(backbone_folder(backbone))
    tok, enc = AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name, use_safetensors=True).eval()
    texts, extra, where = [], [], []
    sources = ["quantity", "result", "constant", "orphan"]
    for i, ex in enumerate(examples):
        for k, st in enumerate(ex["steps"]):
            a, b = st["region"] or (0, len(ex["question"]))
            texts.append(ex["question"][a:b])
            counts = [sum(o["source"] == s for o in st["operands"]) for s in sources]
            extra.append(np.eye(len(OPS))[OPS.index(st["op"])].tolist() + [c / 2 for c in counts])
            where.append((i, k))
    out = []
    with torch.no_grad():
        for j in range(0, len(texts), batch_size):
            b = tok(texts[j:j + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = enc(**b).last_hidden_state  # [batch, token, d]
            m = b["attention_mask"][..., None].float()
            out.append(((h * m).sum(1) / m.sum(1)).numpy())
    emb = np.concatenate(out) if out else np.zeros((0, 1))
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), EPS)
    return np.concatenate([emb, np.asarray(extra)], 1), where
