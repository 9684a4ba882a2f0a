"""Attention signals: JSD step boundaries, IAF maps, and per-head scores against gold.

    >>> t = TraceStore("runs/default/traces").get("gsm8k/train/0")
    >>> a = read(t, heads=[(0, 3)], contrast=True)        # [sol, prob]
    >>> boundaries(jsd_curve(a), rule="topk", rate=0.08)  # solution token indices
    [12, 27]
    >>> iaf(a, 0, 12).round(2)                            # [prob], sums to 1
    array([0.01, 0.  , 0.12, ...])

JSD(t) = JS(A[t-1], A[t]) between consecutive solution rows renormalised over
the problem tokens, smoothed with Savitzky–Golay (window 5, polyorder 2);
its peaks are step boundaries. IAF(j, S) is the share of a step's
solution→problem attention that lands on problem token j.

Attention sinks: in small teachers a few tokens take a third of every row
whatever the content, so a plain mean over heads points nowhere. `contrast`
subtracts the problem's mean solution→problem row first; negative values are
clipped before anything is renormalised. Every reader takes `contrast=` so
both readings can be measured.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks, savgol_filter

from .trace import Trace, contrast as _contrast

EPS = 1e-9


def read(trace: Trace, heads: list[tuple[int, int]] | None = None, contrast: bool = True) -> np.ndarray:
    """Solution→problem attention averaged over (layer, head) pairs (trace indices): [sol, prob]."""
    if heads is None:
        a = trace.attn.astype(np.float32)  # [layer, head, sol, prob]
        return (_contrast(a) if contrast else a).mean(axis=(0, 1))
    a = np.stack([trace.attn[layer, head].astype(np.float32) for layer, head in heads])  # [pair, sol, prob]
    return (_contrast(a) if contrast else a).mean(axis=0)


def normalise(rows: np.ndarray) -> np.ndarray:
    """Rows as distributions: negatives clipped (contrast), then renormalised: [..., n]."""
    rows = np.clip(rows, 0, None) + EPS
    return rows / rows.sum(-1, keepdims=True)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence (nats) between matching rows: [..., n] -> [...]."""
    m = 0.5 * (p + q)
    return 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)


def jsd_curve(attn: np.ndarray, smooth: bool = True) -> np.ndarray:
    """JSD(t) between rows t-1 and t (JSD(0) = 0), smoothed: [sol]."""
    rows = normalise(attn)
    jsd = np.concatenate([[0.0], js_divergence(rows[:-1], rows[1:])]) if len(rows) > 1 else np.zeros(len(rows))
    if smooth and len(jsd) >= 5:
        jsd = savgol_filter(jsd, window_length=5, polyorder=2)
    return jsd


def boundaries(curve: np.ndarray, rule: str = "topk", rate: float = 0.08, prominence: float = 0.0,
               distance: int = 3) -> list[int]:
    """Peak positions of a JSD curve: step boundaries (token indices).

    rule "peaks": scipy's local maxima (optionally above a prominence);
    rule "topk": the highest k = round(rate × len) local maxima at least `distance` apart.
    """
    if len(curve) < 3:
        return []
    peaks, props = find_peaks(curve, prominence=prominence if rule == "peaks" and prominence else None,
                              distance=distance if rule == "topk" else None)
    if rule == "peaks":
        return sorted(int(p) for p in peaks)
    if rule != "topk":
        raise ValueError(f"unknown peak rule {rule!r}; use peaks or topk")
    k = max(1, round(rate * len(curve)))
    best = peaks[np.argsort(-curve[peaks])[:k]]
    return sorted(int(p) for p in best)


def boundary_f1(pred: list[int], gold: list[int], tolerance: int = 2) -> tuple[int, int, int]:
    """(true positives, predicted, gold) with one-to-one matching within ±tolerance tokens."""
    used, tp = set(), 0
    for p in pred:
        match = [g for g in gold if abs(g - p) <= tolerance and g not in used]
        if match:
            used.add(min(match, key=lambda g: abs(g - p)))
            tp += 1
    return tp, len(pred), len(gold)


def f1(tp: int, n_pred: int, n_gold: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def iaf(attn: np.ndarray, start: int, end: int) -> np.ndarray:
    """IAF(j, S) for the solution step S = rows [start, end): [prob], sums to 1."""
    block = np.clip(attn[start:end], 0, None)
    return block.sum(0) / max(block.sum(), EPS)


def step_mass(trace: Trace, start: int, end: int) -> dict:
    """A step's mean attention mass on prompt, problem and solution so far (all heads, raw)."""
    m = trace.mass[:, :, start:end].astype(np.float32).mean(axis=(0, 1, 2))
    return {"prompt": float(m[0]), "problem": float(m[1]), "solution": float(m[2])}


def line_starts(trace: Trace) -> list[int]:
    """Gold step boundaries: the first solution token of every line after the first."""
    from .trace import lines

    return [a for _, a, _ in lines(trace)][1:]
